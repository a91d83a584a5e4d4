"""Resume states fenced by the claim's token (service/worker/resume.py), and the sweep of temporary files that
killed writes leave behind (models.checkpoints.sweep_temporary_files)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from models.checkpoints import save_tensors, sweep_temporary_files
from service.jobs.queue import Claim
from service.worker.resume import (
    discard_resume_state,
    fenced_path,
    load_resume_state,
    resume_files,
    resume_path,
    save_resume_state,
)
from tests.support.specs import spec_of

SPEC = spec_of(hidden_layers=[8])


def claim(token: int, job_id: str = "job1") -> Claim:
    return Claim(job_id, SPEC, seed=7, attempt=token, max_attempts=5, token=token, epochs_done=0)


def state(epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    return {"w": torch.full((2,), float(epoch))}, {"epoch": epoch}


def loaded_epoch(path: Path, token: int) -> int | None:
    found = load_resume_state(path, claim(token))
    return None if found is None else int(found[1]["epoch"])


def test_an_attempt_resumes_from_the_newest_earlier_attempt(tmp_path: Path) -> None:
    path = resume_path(tmp_path, "job1")
    save_resume_state(path, claim(3), *state(2))
    assert resume_files(path) == [(3, fenced_path(path, 3))]
    assert fenced_path(path, 3).name == "job1.000000000003.safetensors"
    assert loaded_epoch(path, 4) == 2
    assert loaded_epoch(path, 3) is None  # its own token: nothing from an earlier attempt
    save_resume_state(path, claim(4), *state(5))
    assert [token for token, _ in resume_files(path)] == [4]  # the older state went with the newer write
    assert loaded_epoch(path, 5) == 5


def test_a_late_write_of_a_stale_attempt_neither_overwrites_nor_wins(tmp_path: Path) -> None:
    path = resume_path(tmp_path, "job1")
    save_resume_state(path, claim(3), *state(4))  # attempt 3 wrote epoch 4, then froze past its lease
    save_resume_state(path, claim(4), *state(6))  # attempt 4 took the job over and went on to epoch 6
    save_resume_state(path, claim(3), *state(5))  # attempt 3 wakes and writes its epoch 5: refused
    assert [token for token, _ in resume_files(path)] == [4]
    assert loaded_epoch(path, 5) == 6

    # The stale write comes before the new attempt's first one: it lands under its own token and is replaced.
    other = resume_path(tmp_path, "job2")
    save_resume_state(other, claim(3, "job2"), *state(4))
    save_resume_state(other, claim(3, "job2"), *state(5))
    assert loaded_epoch_of(other, "job2", 4) == 5  # attempt 4 resumes from the freshest state there is
    save_resume_state(other, claim(4, "job2"), *state(6))
    assert [token for token, _ in resume_files(other)] == [4]
    assert [token for token, _ in resume_files(path)] == [4]  # another job's files are its own


def loaded_epoch_of(path: Path, job_id: str, token: int) -> int | None:
    found = load_resume_state(path, claim(token, job_id))
    return None if found is None else int(found[1]["epoch"])


def test_a_state_written_before_fencing_is_read_as_token_0_and_replaced(tmp_path: Path) -> None:
    path = resume_path(tmp_path, "job1")
    save_resume_state(path, claim(1), *state(3))
    fenced_path(path, 1).rename(path)  # as earlier releases named it: `<job>.safetensors`
    assert resume_files(path) == [(0, path)]
    assert loaded_epoch(path, 1) == 3
    save_resume_state(path, claim(1), *state(4))
    assert resume_files(path) == [(1, fenced_path(path, 1))] and not path.exists()


def test_a_state_of_another_run_is_not_resumed(tmp_path: Path) -> None:
    path = resume_path(tmp_path, "job1")
    save_resume_state(path, claim(2), *state(3))
    other_seed = Claim("job1", SPEC, seed=8, attempt=3, max_attempts=5, token=3, epochs_done=0)
    assert load_resume_state(path, other_seed) is None


def test_discarding_removes_every_token(tmp_path: Path) -> None:
    path = resume_path(tmp_path, "job1")
    save_resume_state(path, claim(2), *state(1))
    save_tensors(fenced_path(path, 9), *state_tensors(), durable=False)  # a later attempt's, say
    keep = resume_path(tmp_path, "job10")  # a job whose id starts with the other's
    save_resume_state(keep, claim(1, "job10"), *state(1))
    discard_resume_state(path)
    assert resume_files(path) == [] and [token for token, _ in resume_files(keep)] == [1]


def state_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return {"w": torch.zeros(1)}, {"format": "x"}


def test_temporary_files_of_killed_writes_are_swept_once_old(tmp_path: Path) -> None:
    stale = tmp_path / ".abc.safetensors.k2j3.tmp"
    fresh = tmp_path / ".def.safetensors.x9y8.tmp"
    kept = tmp_path / "abc.safetensors"
    for path in (stale, fresh, kept):
        path.write_bytes(b"partial")
    an_hour_ago = time.time() - 3700
    os.utime(stale, (an_hour_ago, an_hour_ago))
    os.utime(kept, (an_hour_ago, an_hour_ago))
    assert sweep_temporary_files(tmp_path, older_than=3600) == [stale]
    assert not stale.exists() and fresh.exists() and kept.exists()
    assert sweep_temporary_files(tmp_path / "missing", older_than=3600) == []
