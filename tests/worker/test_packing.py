"""Packed training through the queue and the worker: jobs of one shape claimed together, trained as one
stacked model (models/packed.py), each still a whole job of its own."""

from __future__ import annotations

import threading

import pytest
import torch

from models.spec import TrainingSpec
from service.jobs import queue
from service.jobs.queries import get_job, get_metrics
from service.jobs.status import JobStatus
from service.registry import get_model
from service.settings import FaultInjection, Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.artifacts import checkpoint_file, resume_record
from tests.support.specs import spec_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.db

SHAPE = {"hidden_layers": [16], "batch_size": 64, "epochs": 3}


def member(**fields: object) -> TrainingSpec:
    return spec_of(**{**SHAPE, **fields})


def packing(settings: Settings, pack_max: int, **changes: object) -> Settings:
    return settings.model_copy(update={"pack_max": pack_max, **changes})


def first_losses(db: Database, job_ids: list[str]) -> list[list[float]]:
    return [[row.train_loss for row in get_metrics(db, job_id)[1]] for job_id in job_ids]


def test_the_claim_takes_fresh_jobs_of_one_shape_oldest_first(db: Database) -> None:
    first = queue.enqueue_job(db, member(lr=0.1, seed=1), max_attempts=3)
    other_shape = queue.enqueue_job(db, member(hidden_layers=[32], seed=2), max_attempts=3)
    second = queue.enqueue_job(db, member(lr=0.3, momentum=0.9, seed=3), max_attempts=3)
    third = queue.enqueue_job(db, member(lr=0.2, seed=4), max_attempts=3)
    fourth = queue.enqueue_job(db, member(lr=0.2, seed=5), max_attempts=3)
    claims = queue.claim_jobs(db, "w", 30, "cpu", limit=3)
    assert [claim.job_id for claim in claims] == [first.id, second.id, third.id]
    assert all(get_job(db, claim.job_id).status is JobStatus.running for claim in claims)
    assert len({claim.token for claim in claims}) >= 1 and all(claim.attempt == 1 for claim in claims)
    # The next claim starts at the oldest queued job, whatever its shape.
    assert [claim.job_id for claim in queue.claim_jobs(db, "w", 30, "cpu", limit=3)] == [other_shape.id]
    assert [claim.job_id for claim in queue.claim_jobs(db, "w", 30, "cpu", limit=3)] == [fourth.id]


def test_a_job_with_recorded_epochs_resumes_alone(db: Database) -> None:
    resumed = queue.enqueue_job(db, member(seed=1), max_attempts=3)
    fresh = queue.enqueue_job(db, member(seed=2), max_attempts=3)
    [claim] = queue.claim_jobs(db, "w", 30, "cpu", limit=1)
    queue.begin_attempt(db, claim, [], {})
    from models.training import EpochMetrics

    queue.record_epoch(db, claim, EpochMetrics(epoch=1, train_loss=1.0, train_acc=0.5, test_acc=0.5, seconds=1.0))
    assert queue.retry_job(db, claim, "a passing error") is JobStatus.queued
    assert [c.job_id for c in queue.claim_jobs(db, "w", 30, "cpu", limit=4)] == [resumed.id]
    assert [c.job_id for c in queue.claim_jobs(db, "w", 30, "cpu", limit=4)] == [fresh.id]


def test_packed_jobs_each_succeed_as_they_would_alone(settings: Settings, db: Database) -> None:
    specs = [member(lr=0.1, seed=1), member(lr=0.3, momentum=0.9, seed=2), member(lr=0.05, dropout=0.0, seed=3)]
    packed_ids = [queue.enqueue_job(db, spec, max_attempts=3).id for spec in specs]
    worker = Worker(packing(settings, 4), db, torch.device("cpu"), burst=True)
    try:
        assert worker.run_once() is True  # one claim: the three together
        assert worker.run_once() is False
    finally:
        worker.close()
    jobs = [get_job(db, job_id) for job_id in packed_ids]
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 3, [job.error for job in jobs]
    assert all(job.provenance is not None and job.provenance["pack_size"] == 3 for job in jobs)
    assert len({job.model_id for job in jobs}) == 3
    for job in jobs:
        model = get_model(db, job.model_id)
        assert model.job_id == job.id and checkpoint_file(settings, model.id).exists()
        assert resume_record(settings, db, job.id) is None
    alone_ids = [queue.enqueue_job(db, spec, max_attempts=3).id for spec in specs]
    lone = Worker(packing(settings, 1), db, torch.device("cpu"), burst=True)
    try:
        for _ in specs:
            assert lone.run_once() is True
    finally:
        lone.close()
    assert all("pack_size" not in (get_job(db, job_id).provenance or {}) for job_id in alone_ids)
    for packed, alone in zip(first_losses(db, packed_ids), first_losses(db, alone_ids), strict=True):
        assert len(packed) == len(alone) == 3
        assert packed[0] == pytest.approx(alone[0], abs=1e-5)
        assert packed == pytest.approx(alone, abs=1e-4)


def test_a_cancelled_member_ends_cancelled_and_the_others_are_undisturbed(settings: Settings, db: Database) -> None:
    long_shape = {"hidden_layers": [16], "batch_size": 8, "epochs": 20}
    specs = [spec_of(**long_shape, lr=0.05, seed=seed) for seed in (1, 2, 3)]
    ids = [queue.enqueue_job(db, spec, max_attempts=3).id for spec in specs]
    worker = Worker(packing(settings, 4), db, torch.device("cpu"), burst=True)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        wait_until(lambda: get_job(db, ids[1]).status is JobStatus.running, timeout=60)
        queue.request_cancel(db, ids[1])
        # It ends while the rest of its pack trains on.
        wait_until(lambda: get_job(db, ids[1]).status is JobStatus.cancelled, timeout=60)
        assert get_job(db, ids[0]).status is JobStatus.running
        thread.join(timeout=120)
        assert not thread.is_alive()
    finally:
        worker.close()
    cancelled = get_job(db, ids[1])
    assert cancelled.status is JobStatus.cancelled and cancelled.model_id is None
    assert len(get_metrics(db, ids[1])[1]) < 20  # it left the pack mid-run
    kept = [get_job(db, ids[0]), get_job(db, ids[2])]
    assert [job.status for job in kept] == [JobStatus.succeeded] * 2
    alone_ids = [queue.enqueue_job(db, spec, max_attempts=3).id for spec in (specs[0], specs[2])]
    lone = Worker(packing(settings, 1), db, torch.device("cpu"), burst=True)
    try:
        assert lone.run_once() and lone.run_once()
    finally:
        lone.close()
    packed = first_losses(db, [ids[0], ids[2]])
    assert packed == [pytest.approx(losses, abs=1e-4) for losses in first_losses(db, alone_ids)]


def test_a_trainer_killed_mid_pack_leaves_every_member_to_resume_alone(settings: Settings, db: Database) -> None:
    specs = [member(lr=0.1, seed=seed) for seed in (11, 12, 13)]
    ids = [queue.enqueue_job(db, spec, max_attempts=3).id for spec in specs]
    # SIGKILL of the trainer process after the first epoch of the member with seed 12, on the first attempt.
    fault = FaultInjection(kind="kill", seed=12, after_epoch=1, attempt=1)
    worker = Worker(packing(settings, 4, fault_injection=fault), db, torch.device("cpu"), burst=True)
    try:
        assert worker.run_once() is True
        jobs = [get_job(db, job_id) for job_id in ids]
        assert [job.status for job in jobs] == [JobStatus.queued] * 3, [job.error for job in jobs]
        assert all(job.epochs_done >= 1 for job in jobs[:2])  # the killed member had finished its first epoch
        while worker.run_once():  # each resumes alone, from its last finished epoch
            pass
    finally:
        worker.close()
    jobs = [get_job(db, job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 3, [job.error for job in jobs]
    assert [job.attempt for job in jobs] == [2, 2, 2]
    for job_id in ids:
        assert [row.epoch for row in get_metrics(db, job_id)[1]] == [1, 2, 3]  # every epoch recorded once


def test_racing_pack_claims_take_every_job_exactly_once(db: Database) -> None:
    ids = {
        queue.enqueue_job(db, member(hidden_layers=[16 + index % 2], seed=index), max_attempts=3).id
        for index in range(40)
    }
    taken: list[str] = []
    lock = threading.Lock()

    def claim_until_empty(worker: str) -> None:
        while claims := queue.claim_jobs(db, worker, 30, "cpu", limit=4):
            assert len(claims) <= 4 and len({claim.spec.hidden_layers[0] for claim in claims}) == 1
            with lock:
                taken.extend(claim.job_id for claim in claims)

    threads = [threading.Thread(target=claim_until_empty, args=(f"w{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(taken) == sorted(ids)
