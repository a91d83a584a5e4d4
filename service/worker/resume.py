"""Per-job resume checkpoints: the training state after the last finished epoch.

Written after every epoch (atomic rename), read when a requeued job is claimed again, removed once the
job ends. Only a file made for the same job, spec and seed is ever resumed from; anything else is
ignored and the attempt starts over.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from models.checkpoints import CheckpointError, load_tensors, save_tensors
from service.jobs.queue import Claim

log = logging.getLogger(__name__)

FORMAT = "fmnist-resume/1"


def resume_path(folder: Path, job_id: str) -> Path:
    return folder / f"{job_id}.safetensors"


def _identity(claim: Claim) -> dict[str, str]:
    return {"format": FORMAT, "job_id": claim.job_id, "seed": str(claim.seed), "spec": claim.spec.model_dump_json()}


def save_resume_state(path: Path, claim: Claim, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    # No fsync: this guards against a crashed worker, and a file a power cut damaged is just not resumed from.
    save_tensors(path, tensors, {**_identity(claim), "state": json.dumps(meta)}, durable=False)


def load_resume_state(path: Path, claim: Claim) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        tensors, metadata = load_tensors(path)
    except CheckpointError as exc:
        log.warning("job %s: resume checkpoint unreadable (%s); starting over", claim.job_id, exc)
        return None
    expected = _identity(claim)
    if any(metadata.get(key) != value for key, value in expected.items()) or "state" not in metadata:
        log.warning("job %s: resume checkpoint belongs to another run; starting over", claim.job_id)
        return None
    return tensors, json.loads(metadata["state"])


def discard_resume_state(path: Path) -> None:
    path.unlink(missing_ok=True)
