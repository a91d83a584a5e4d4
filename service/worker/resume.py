"""Per-job resume checkpoints: the training state after the last finished epoch.

Written after every epoch (atomic rename), read when a requeued job is claimed again, removed once the
job ends. Only a file made for the same job, spec and seed is ever resumed from; anything else is
ignored and the attempt starts over.

Fenced by the claim's token (the lease's fencing token, which grows with every claim of the job): an
attempt writes ``<job>.<token>.safetensors`` and a new attempt resumes from the highest token below its own.
A worker that froze past its lease and wakes to write a late epoch writes under its old token, so it can
neither overwrite the state of the attempt that took the job over nor be resumed from once that attempt has
written one. Each write removes the job's files of lower tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from models.checkpoints import CheckpointError, load_tensors, save_tensors
from service.jobs.queue import Claim
from service.jobs.resume_files import fenced_path, resume_files, resume_path

__all__ = [
    "discard_resume_state",
    "fenced_path",
    "load_resume_state",
    "resume_files",
    "resume_path",
    "save_resume_state",
]

log = logging.getLogger(__name__)

FORMAT = "fmnist-resume/1"


def _identity(claim: Claim) -> dict[str, str]:
    return {"format": FORMAT, "job_id": claim.job_id, "seed": str(claim.seed), "spec": claim.spec.model_dump_json()}


def save_resume_state(path: Path, claim: Claim, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Writes the attempt's state under its fencing token, unless a later attempt has written one already (this
    attempt has lost the job: its write would be ignored anyway); then removes the job's older states."""
    files = resume_files(path)
    if files and files[0][0] > claim.token:
        log.warning("job %s: a later attempt holds the job; this attempt's state is not saved", claim.job_id)
        return
    # No fsync: this guards against a crashed worker, and a file a power cut damaged is just not resumed from.
    save_tensors(
        fenced_path(path, claim.token), tensors, {**_identity(claim), "state": json.dumps(meta)}, durable=False
    )
    for token, older in files:
        if token < claim.token:
            older.unlink(missing_ok=True)


def load_resume_state(path: Path, claim: Claim) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The state to resume ``claim`` from: the newest one written under a lower token than the claim's own, if
    it belongs to the same run; None to start over."""
    for token, candidate in resume_files(path):
        if token >= claim.token:
            continue  # not an earlier attempt's (the claim's own, or from an attempt after it: it lost the job)
        try:
            tensors, metadata = load_tensors(candidate)
        except CheckpointError as exc:
            log.warning("job %s: resume checkpoint unreadable (%s); starting over", claim.job_id, exc)
            return None
        expected = _identity(claim)
        if any(metadata.get(key) != value for key, value in expected.items()) or "state" not in metadata:
            log.warning("job %s: resume checkpoint belongs to another run; starting over", claim.job_id)
            return None
        return tensors, json.loads(metadata["state"])
    return None


def discard_resume_state(path: Path) -> None:
    """Removes every resume state of the job (all tokens)."""
    for _, found in resume_files(path):
        found.unlink(missing_ok=True)
