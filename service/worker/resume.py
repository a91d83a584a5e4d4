"""Per-job resume states: the training state after the last finished epoch, as safetensors bytes.

The trainer process makes one after every epoch (``resume_state_bytes``) and sends it with the epoch's
metrics; the worker publishes it as the job's ``resume`` artifact in the transaction that records the epoch,
under the claim's fencing token (service.store.artifacts: only the lease holder's transaction commits). When
a requeued job is claimed again, the worker hands the trainer the state an earlier claim published, and the
trainer resumes from it (``parse_resume_state``) only if it was made for the same job, spec and seed; anything
else is ignored and the attempt starts over. The state is dropped once the job ends.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from models.checkpoints import CheckpointError, parse_tensors, serialize_tensors
from service.jobs.queue import Claim

log = logging.getLogger(__name__)

FORMAT = "fmnist-resume/1"


def _identity(claim: Claim) -> dict[str, str]:
    return {"format": FORMAT, "job_id": claim.job_id, "seed": str(claim.seed), "spec": claim.spec.model_dump_json()}


def resume_state_bytes(claim: Claim, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """The state of ``claim``'s run (``tensors``: weights and optimiser state; ``meta``: JSON-able counters and
    history, models.training.Trainer.state) with the run's identity in the header."""
    return serialize_tensors(tensors, {**_identity(claim), "state": json.dumps(meta)})


def parse_resume_state(data: bytes, claim: Claim) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and counters of a state made by ``resume_state_bytes`` for the same job, spec and seed as
    ``claim``; None (logged) for bytes that are unreadable or belong to another run."""
    try:
        tensors, metadata = parse_tensors(data, f"resume state of job {claim.job_id}")
    except CheckpointError as exc:
        log.warning("job %s: resume state unreadable (%s); starting over", claim.job_id, exc)
        return None
    expected = _identity(claim)
    if any(metadata.get(key) != value for key, value in expected.items()) or "state" not in metadata:
        log.warning("job %s: resume state belongs to another run; starting over", claim.job_id)
        return None
    return tensors, json.loads(metadata["state"])
