"""Resume states published with their epoch under the claim's fencing token (queue.record_epoch, the artifact
store), read back by the next claim only, checked against their record; and the sweep of temporary files that
killed writes leave behind (models.checkpoints.sweep_temporary_files). Each store test runs with the bytes in
the home folder and in the database."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import update

from models.checkpoints import sweep_temporary_files
from models.training import EpochMetrics
from service.jobs import queue
from service.jobs.queue import Claim, LeaseLost
from service.settings import Settings
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.store.tables import Artifact, Job, utcnow
from service.worker.resume import parse_resume_state, resume_state_bytes
from tests.support.jobs import add_job
from tests.support.specs import spec_of

SPEC = spec_of(hidden_layers=[8], epochs=9)


@pytest.fixture(params=["folder", "database"])
def store(request: pytest.FixtureRequest, settings: Settings) -> ArtifactStore:
    return ArtifactStore.for_settings(settings.model_copy(update={"artifacts": request.param}))


def state(claim: Claim, epoch: int) -> bytes:
    return resume_state_bytes(claim, {"w": torch.full((2,), float(epoch))}, {"epoch": epoch})


def metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, train_loss=1.0, train_acc=0.5, test_acc=0.5, seconds=0.1)


def claim_again(db: Database, job_id: str) -> Claim:
    """Expires the job's lease, requeues it and claims it again: a new attempt with a higher token."""
    with db.write() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    queue.requeue_expired_leases(db)
    [claim] = queue.claim_jobs(db, "w2", 30, device="cpu", limit=1)
    return claim


def publish(db: Database, store: ArtifactStore, claim: Claim, epoch: int) -> None:
    queue.record_epoch(db, claim, metrics(epoch), resume_state=state(claim, epoch), artifacts=store)


def resumed_epoch(db: Database, store: ArtifactStore, claim: Claim) -> int | None:
    data = store.resume_state(db, claim.job_id, claim.token)
    found = None if data is None else parse_resume_state(data, claim)
    return None if found is None else int(found[1]["epoch"])


def files(store: ArtifactStore) -> list[str]:
    return sorted(path.name for path in store.resume_dir.glob("*")) if store.resume_dir.is_dir() else []


def test_an_attempt_resumes_from_the_state_an_earlier_claim_published(db: Database, store: ArtifactStore) -> None:
    job_id = add_job(db, SPEC)
    [first] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, first, 1)
    publish(db, store, first, 2)
    assert resumed_epoch(db, store, first) is None  # its own token: nothing from an earlier attempt
    second = claim_again(db, job_id)
    assert second.token > first.token
    assert resumed_epoch(db, store, second) == 2
    publish(db, store, second, 3)
    record = store.stat(db, ArtifactKind.resume, job_id)
    assert record is not None and record.token == second.token and record.in_database is store.in_database
    # One state per job: the earlier claim's went with the newer write, its file too.
    expected = [] if store.in_database else [f"{job_id}.{second.token:012d}.{record.sha256[:16]}.safetensors"]
    assert files(store) == expected


def test_a_stale_claim_can_publish_nothing(db: Database, store: ArtifactStore) -> None:
    """The worker that froze past its lease wakes and reports an epoch: its transaction is refused, and the
    state of the claim that took the job over stays the one to resume from."""
    job_id = add_job(db, SPEC)
    [stale] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, stale, 4)
    current = claim_again(db, job_id)
    publish(db, store, current, 6)
    with pytest.raises(LeaseLost):
        publish(db, store, stale, 5)
    record = store.stat(db, ArtifactKind.resume, job_id)
    assert record is not None and record.token == current.token
    later = claim_again(db, job_id)
    assert resumed_epoch(db, store, later) == 6
    if not store.in_database:
        assert files(store) == [store.file_of(record).name], "the refused write left no file"
    else:
        assert files(store) == []


def test_a_state_whose_transaction_rolls_back_leaves_the_previous_one_whole(db: Database, store: ArtifactStore) -> None:
    job_id = add_job(db, SPEC)
    [first] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, first, 1)
    with pytest.raises(RuntimeError, match="commit failed"), db.write() as session:
        store.publish(session, ArtifactKind.resume, job_id, state(first, 2), token=first.token)
        raise RuntimeError("commit failed")  # as a database that fails the commit
    assert resumed_epoch(db, store, claim_again(db, job_id)) == 1
    record = store.stat(db, ArtifactKind.resume, job_id)
    assert files(store) == ([] if store.in_database else [store.file_of(record).name if record else ""])


def test_an_altered_state_is_not_resumed_from(db: Database, store: ArtifactStore) -> None:
    job_id = add_job(db, SPEC)
    [first] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, first, 3)
    if store.in_database:
        with db.write() as session:
            session.execute(update(Artifact).where(Artifact.name == job_id).values(data=state(first, 7)))
    else:
        record = store.stat(db, ArtifactKind.resume, job_id)
        assert record is not None
        path = store.file_of(record)
        path.write_bytes(path.read_bytes()[:-10])  # truncated
    assert resumed_epoch(db, store, claim_again(db, job_id)) is None


def test_a_state_of_another_run_is_not_resumed(db: Database, store: ArtifactStore) -> None:
    job_id = add_job(db, SPEC)
    [first] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, first, 3)
    second = claim_again(db, job_id)
    other_seed = Claim(job_id, SPEC, seed=second.seed + 1, attempt=2, max_attempts=5, token=second.token, epochs_done=3)
    data = store.resume_state(db, job_id, second.token)
    assert data is not None and parse_resume_state(data, second) is not None
    assert parse_resume_state(data, other_seed) is None
    assert parse_resume_state(b"not safetensors at all", second) is None


def test_finishing_the_job_drops_its_state_and_publishes_its_checkpoint(db: Database, store: ArtifactStore) -> None:
    job_id = add_job(db, SPEC)
    [first] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, first, 1)
    checkpoint = b"checkpoint bytes"
    queue.finish_job(db, first, model_id="m" * 32, checkpoint=checkpoint, artifacts=store, selected=metrics(1))
    assert store.stat(db, ArtifactKind.resume, job_id) is None and files(store) == []
    record, data = store.read(db, ArtifactKind.checkpoint, "m" * 32)
    assert data == checkpoint and record.in_database is store.in_database
    assert store.path(ArtifactKind.checkpoint, "m" * 32).exists() is not store.in_database


def test_a_lost_lease_publishes_no_checkpoint(db: Database, store: ArtifactStore) -> None:
    job_id = add_job(db, SPEC)
    [stale] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    claim_again(db, job_id)
    with pytest.raises(LeaseLost):
        queue.finish_job(db, stale, model_id="m" * 32, checkpoint=b"x", artifacts=store, selected=None)
    assert store.stat(db, ArtifactKind.checkpoint, "m" * 32) is None
    assert not store.path(ArtifactKind.checkpoint, "m" * 32).exists(), "the rolled-back write left no file"


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


def test_a_job_cancelled_as_it_finishes_publishes_no_checkpoint(db: Database, store: ArtifactStore) -> None:
    job_id = add_job(db, SPEC)
    [claim] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, claim, 1)
    queue.request_cancel(db, job_id)
    status = queue.finish_job(db, claim, model_id="m" * 32, checkpoint=b"x", artifacts=store, selected=None)
    assert status.value == "cancelled"
    assert store.stat(db, ArtifactKind.checkpoint, "m" * 32) is None
    assert store.stat(db, ArtifactKind.resume, job_id) is None, "the job ended: its state went too"
    assert not store.path(ArtifactKind.checkpoint, "m" * 32).exists() and files(store) == []


def test_a_state_a_killed_worker_wrote_but_never_recorded_goes_when_the_job_ends(
    db: Database, store: ArtifactStore
) -> None:
    job_id = add_job(db, SPEC)
    [first] = queue.claim_jobs(db, "w1", 30, device="cpu", limit=1)
    publish(db, store, first, 1)
    store.stage(ArtifactKind.resume, job_id, state(first, 2), token=first.token)  # then SIGKILL: never recorded
    second = claim_again(db, job_id)
    assert resumed_epoch(db, store, second) == 1, "only the recorded state counts"
    queue.finish_job(db, second, model_id="m" * 32, checkpoint=b"x", artifacts=store, selected=None)
    assert files(store) == [], "the ended job's resume files went, recorded or not"


def killed_while_staging(store: ArtifactStore, claim: Claim, epoch: int) -> None:
    """Stages a resume state in a forked process that SIGKILLs itself once the temporary file is written, as it
    renames it: what a worker killed mid-write leaves."""

    def write() -> None:
        Path.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[assignment,method-assign]
        store.stage(ArtifactKind.resume, claim.job_id, state(claim, epoch), token=claim.token)

    child = multiprocessing.get_context("fork").Process(target=write)
    child.start()
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL


def test_a_state_a_worker_was_killed_writing_goes_when_the_job_ends(db: Database, settings: Settings) -> None:
    store = ArtifactStore.for_settings(settings.model_copy(update={"artifacts": "folder"}))
    job_id, other_id = add_job(db, SPEC), add_job(db, SPEC)
    first, other = queue.claim_jobs(db, "w1", 30, device="cpu", limit=2)
    assert {first.job_id, other.job_id} == {job_id, other_id}
    publish(db, store, first, 1)
    killed_while_staging(store, first, 2)
    killed_while_staging(store, other, 1)
    temporary = [path.name for path in store.resume_files(temporary=True)]
    assert len(temporary) == 2 and all(name.startswith(".") and name.endswith(".tmp") for name in temporary)
    second = claim_again(db, first.job_id)
    assert resumed_epoch(db, store, second) == 1
    queue.finish_job(db, second, model_id="m" * 32, checkpoint=b"x", artifacts=store, selected=None)
    # The ended job's half-written state went with its state; the other job, still running, keeps its own.
    assert files(store) == [path.name for path in store.resume_files(other.job_id, temporary=True)]
    assert len(files(store)) == 1
