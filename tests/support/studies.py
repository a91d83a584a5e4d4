"""Scripted studies: trials claimed and ended with learning curves written by the test, no training."""

from __future__ import annotations

from models.training import EpochMetrics
from service.jobs import queue
from service.jobs.queue import Claim
from service.store.db import Database
from tests.support.artifacts import DATABASE_STORE


def claim_all(db: Database) -> list[Claim]:
    """Claims every queued job, oldest first."""
    claims = []
    while claim := queue.claim_next_job(db, "test-worker", 60, device="cpu"):
        claims.append(claim)
    return claims


def epoch_metrics(epoch: int, val_acc: float) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch, train_loss=1.0, train_acc=val_acc, test_acc=val_acc, val_acc=val_acc, lr=0.1, seconds=0.1
    )


def run_curve(db: Database, claim: Claim, curve: list[float], finish: bool = True) -> None:
    """Records ``curve`` as the claim's per-epoch validation accuracy, then (``finish``) ends it succeeded with
    its last epoch kept."""
    for epoch, val_acc in enumerate(curve, start=1):
        queue.record_epoch(db, claim, epoch_metrics(epoch, val_acc))
    if finish:
        selected = epoch_metrics(len(curve), curve[-1])
        queue.finish_job(
            db, claim, model_id=queue.new_id(), checkpoint=b"checkpoint", artifacts=DATABASE_STORE, selected=selected
        )
