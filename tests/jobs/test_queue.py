"""service/jobs/queue.py: state transitions, atomic claims, leases and their fencing."""

from __future__ import annotations

import hashlib
import multiprocessing
from datetime import timedelta

import pytest

from models.spec import TrainingSpec
from models.training import EpochMetrics
from service.errors import ModelNotFound
from service.jobs import queue
from service.jobs.queries import get_job, get_metrics
from service.jobs.queue import LeaseLost
from service.jobs.status import JobStatus
from service.registry import get_model
from service.settings import Settings
from service.store.artifacts import ArtifactKind
from service.store.db import Database
from service.store.tables import utcnow
from tests.support.artifacts import DATABASE_STORE

pytestmark = pytest.mark.db

SPEC = TrainingSpec(hidden_layers=[8], epochs=3)


def metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, train_loss=1.0 / epoch, train_acc=0.5, test_acc=0.5, seconds=0.1)


def test_enqueue_stores_a_queued_job_with_a_fixed_seed(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.queued
    assert stored.attempt == 0 and stored.epochs_done == 0
    assert 0 <= stored.seed < 2**31
    assert TrainingSpec.model_validate(stored.spec) == SPEC


def test_enqueue_keeps_the_specs_seed(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC.model_copy(update={"seed": 1234}), max_attempts=3)
    assert get_job(db, job.id).seed == 1234


def test_claims_take_jobs_oldest_first_then_none(db: Database) -> None:
    first = queue.enqueue_job(db, SPEC, max_attempts=3)
    second = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim_a = queue.claim_next_job(db, "w1", 30, device="cpu")
    claim_b = queue.claim_next_job(db, "w2", 30, device="cpu")
    assert claim_a is not None and claim_b is not None
    assert (claim_a.job_id, claim_b.job_id) == (first.id, second.id)
    assert queue.claim_next_job(db, "w3", 30, device="cpu") is None
    running = get_job(db, first.id)
    assert running.status is JobStatus.running
    assert running.attempt == 1 and running.worker_id == "w1" and running.device == "cpu"
    assert running.lease_expires_at is not None and running.lease_expires_at > utcnow()


def _claim_all(url: str, worker: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    database = Database(url)
    claimed = []
    while (claim := queue.claim_next_job(database, worker, 30, device="cpu")) is not None:
        claimed.append(claim.job_id)
    database.dispose()
    out.put(claimed)


def test_concurrent_claims_from_several_processes_never_double_claim(db: Database, settings: Settings) -> None:
    job_ids = {queue.enqueue_job(db, SPEC, max_attempts=3).id for _ in range(60)}
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    workers = [context.Process(target=_claim_all, args=(settings.sqlalchemy_url, f"w{i}", results)) for i in range(4)]
    for process in workers:
        process.start()
    claimed = [results.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0
    flat = [job_id for batch in claimed for job_id in batch]
    assert len(flat) == len(set(flat)), "a job was claimed twice"
    assert set(flat) == job_ids
    assert all(get_job(db, job_id).attempt == 1 for job_id in job_ids)


def test_expired_lease_requeues_with_attempt_raised_and_progress_kept(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    queue.record_epoch(db, claim, metrics(1))
    requeued, failed = queue.requeue_expired_leases(db, now=utcnow() + timedelta(seconds=31))
    assert (requeued, failed) == ([job.id], [])
    stored = get_job(db, job.id)
    # Progress stays: the next attempt resumes from its checkpoint and reconciles the metrics (begin_attempt).
    assert stored.status is JobStatus.queued and stored.attempt == 1 and stored.epochs_done == 1
    assert "lease" in (stored.error or "")
    assert [row.epoch for row in get_metrics(db, job.id)[1]] == [1]
    again = queue.claim_next_job(db, "w2", 30, device="cpu")
    assert again is not None and again.attempt == 2 and again.token == claim.token + 1


def test_a_live_lease_is_not_requeued(db: Database) -> None:
    queue.enqueue_job(db, SPEC, max_attempts=3)
    assert queue.claim_next_job(db, "w1", 30, device="cpu") is not None
    assert queue.requeue_expired_leases(db, now=utcnow() + timedelta(seconds=29)) == ([], [])


def test_expired_lease_on_the_last_attempt_fails_the_job_with_the_reason(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=2)
    for _ in range(2):
        assert queue.claim_next_job(db, "w", 30, device="cpu") is not None
        queue.requeue_expired_leases(db, now=utcnow() + timedelta(seconds=60))
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.failed
    assert stored.attempt == 2
    assert "lease" in (stored.error or "") and stored.finished_at is not None


def test_an_expired_lease_with_a_cancel_request_ends_cancelled(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    assert queue.claim_next_job(db, "w1", 30, device="cpu") is not None
    queue.request_cancel(db, job.id)
    assert queue.requeue_expired_leases(db, now=utcnow() + timedelta(seconds=31)) == ([], [])
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.cancelled and stored.finished_at is not None


def test_a_stale_claim_can_write_nothing(db: Database) -> None:
    queue.enqueue_job(db, SPEC, max_attempts=3)
    stale = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert stale is not None
    queue.requeue_expired_leases(db, now=utcnow() + timedelta(seconds=31))
    fresh = queue.claim_next_job(db, "w2", 30, device="cpu")
    assert fresh is not None and fresh.job_id == stale.job_id
    for write in (
        lambda: queue.renew_lease(db, stale, 30),
        lambda: queue.record_epoch(db, stale, metrics(1)),
        lambda: queue.fail_job(db, stale, "late"),
        lambda: queue.release_job(db, stale),
        lambda: queue.cancel_claimed_job(db, stale),
        lambda: queue.begin_attempt(db, stale, [], {}),
        lambda: queue.finish_job(
            db, stale, model_id="m" * 32, checkpoint=b"checkpoint", artifacts=DATABASE_STORE, selected=metrics(1)
        ),
    ):
        with pytest.raises(LeaseLost):
            write()
    stored = get_job(db, fresh.job_id)
    assert stored.status is JobStatus.running and stored.worker_id == "w2" and stored.model_id is None
    queue.record_epoch(db, fresh, metrics(1))
    assert [row.epoch for row in get_metrics(db, fresh.job_id)[1]] == [1]


def test_renew_lease_extends_it_and_reports_cancel_requests(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 5, device="cpu")
    assert claim is not None
    before = get_job(db, job.id).lease_expires_at
    assert queue.renew_lease(db, claim, 60).cancel_requested is False
    after = get_job(db, job.id).lease_expires_at
    assert before is not None and after is not None and after > before + timedelta(seconds=50)
    queue.request_cancel(db, job.id)
    assert queue.renew_lease(db, claim, 60).cancel_requested is True


def test_a_packs_heartbeat_renews_every_claim_that_holds_and_names_those_that_do_not(db: Database) -> None:
    ids = [queue.enqueue_job(db, SPEC.model_copy(update={"seed": seed}), max_attempts=3).id for seed in (1, 2, 3)]
    claims = queue.claim_jobs(db, "w1", 5, device="cpu", limit=3)
    assert [claim.job_id for claim in claims] == ids
    queue.request_cancel(db, ids[1])
    queue.fail_job(db, claims[2], "ended elsewhere")  # its lease no longer holds
    states = queue.renew_leases(db, claims, 60)
    assert states[0] is not None and states[0].cancel_requested is False
    assert states[1] is not None and states[1].cancel_requested is True
    assert states[2] is None
    renewed = get_job(db, ids[0]).lease_expires_at
    assert renewed is not None and renewed > get_job(db, ids[0]).updated_at + timedelta(seconds=50)


def test_record_epoch_stores_metrics_and_progress(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    queue.record_epoch(db, claim, metrics(1))
    queue.record_epoch(db, claim, metrics(2))
    stored, rows = get_metrics(db, job.id)
    assert stored.epochs_done == 2
    assert [(row.epoch, row.train_loss) for row in rows] == [(1, 1.0), (2, 0.5)]


def test_finish_registers_the_model_and_succeeds(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    selected = EpochMetrics(epoch=3, train_loss=0.3, train_acc=0.9, test_acc=0.88, val_acc=0.89, seconds=1.0)
    queue.finish_job(
        db, claim, model_id="a" * 32, checkpoint=b"checkpoint", artifacts=DATABASE_STORE, selected=selected
    )
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.succeeded and stored.model_id == "a" * 32
    assert stored.finished_at is not None and stored.lease_expires_at is None
    model = get_model(db, "a" * 32)
    assert (model.test_acc, model.val_acc, model.epoch, model.job_id) == (0.88, 0.89, 3, job.id)
    assert (model.sha256, model.size_bytes) == (hashlib.sha256(b"checkpoint").hexdigest(), len(b"checkpoint"))
    assert DATABASE_STORE.read(db, ArtifactKind.checkpoint, model.id)[1] == b"checkpoint", "published with it"


def test_cancel_queued_is_immediate(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    cancelled = queue.request_cancel(db, job.id)
    assert cancelled.status is JobStatus.cancelled and cancelled.finished_at is not None
    assert queue.claim_next_job(db, "w1", 30, device="cpu") is None


def test_cancel_running_flags_it_and_the_worker_ends_it(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    flagged = queue.request_cancel(db, job.id)
    assert flagged.status is JobStatus.running and flagged.cancel_requested
    queue.cancel_claimed_job(db, claim)
    assert get_job(db, job.id).status is JobStatus.cancelled


# Every way a worker ends an attempt, as the worker calls it.
ENDINGS = {
    "finish": lambda db, claim: queue.finish_job(
        db, claim, model_id="e" * 32, checkpoint=b"checkpoint", artifacts=DATABASE_STORE, selected=metrics(1)
    ),
    "fail": lambda db, claim: queue.fail_job(db, claim, "boom"),
    "retry": lambda db, claim: queue.retry_job(db, claim, "disk hiccup"),
    "release": lambda db, claim: queue.release_job(db, claim),
}
UNCANCELLED = {
    "finish": JobStatus.succeeded,
    "fail": JobStatus.failed,
    "retry": JobStatus.queued,
    "release": JobStatus.queued,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_cancel_asked_for_before_the_attempt_ends_wins(db: Database, ending: str) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    queue.record_epoch(db, claim, metrics(1))
    queue.request_cancel(db, job.id)  # answered 200: the job must end cancelled, whatever the worker does next
    assert ENDINGS[ending](db, claim) is JobStatus.cancelled
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.cancelled and stored.finished_at is not None
    assert stored.model_id is None and stored.lease_expires_at is None
    assert stored.epochs_done == 1, "the finished epochs stay recorded"
    with pytest.raises(ModelNotFound):
        get_model(db, "e" * 32)


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_without_a_cancel_each_ending_reports_its_own_status(db: Database, ending: str) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    assert ENDINGS[ending](db, claim) is UNCANCELLED[ending]
    assert get_job(db, job.id).status is UNCANCELLED[ending]


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_an_ending_with_a_stale_lease_is_refused_even_with_a_cancel(db: Database, ending: str) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    stale = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert stale is not None
    queue.requeue_expired_leases(db, now=utcnow() + timedelta(seconds=60))
    assert queue.claim_next_job(db, "w2", 30, device="cpu") is not None
    queue.request_cancel(db, job.id)
    with pytest.raises(LeaseLost):
        ENDINGS[ending](db, stale)
    assert get_job(db, job.id).status is JobStatus.running, "the current holder decides"


@pytest.mark.parametrize("end", ["succeeded", "failed", "cancelled"])
def test_cancel_of_an_ended_job_is_refused(db: Database, end: str) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    if end == "cancelled":
        queue.request_cancel(db, job.id)
    else:
        claim = queue.claim_next_job(db, "w1", 30, device="cpu")
        assert claim is not None
        if end == "failed":
            queue.fail_job(db, claim, "boom")
        else:
            queue.finish_job(
                db, claim, model_id="c" * 32, checkpoint=b"checkpoint", artifacts=DATABASE_STORE, selected=None
            )
    with pytest.raises(queue.JobNotCancellable, match=end):
        queue.request_cancel(db, job.id)


def test_cancel_unknown_job(db: Database) -> None:
    with pytest.raises(queue.JobNotFound):
        queue.request_cancel(db, "nope")


def test_release_returns_the_job_without_spending_an_attempt(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    queue.record_epoch(db, claim, metrics(1))
    queue.release_job(db, claim)
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.queued and stored.attempt == 0 and stored.worker_id is None
    assert stored.epochs_done == 1 and len(get_metrics(db, job.id)[1]) == 1


def test_begin_attempt_replaces_the_recorded_epochs(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    for epoch in (1, 2, 3):
        queue.record_epoch(db, claim, metrics(epoch))
    queue.requeue_expired_leases(db, now=utcnow() + timedelta(seconds=60))
    again = queue.claim_next_job(db, "w2", 30, device="cpu")
    assert again is not None
    # The resume checkpoint held two epochs: the third is trained again and must not appear twice.
    queue.begin_attempt(db, again, [metrics(1), metrics(2)], {"torch": "x"})
    stored, rows = get_metrics(db, job.id)
    assert stored.epochs_done == 2 and [row.epoch for row in rows] == [1, 2]
    assert stored.provenance == {"torch": "x"}
    queue.record_epoch(db, again, metrics(3))
    assert [row.epoch for row in get_metrics(db, job.id)[1]] == [1, 2, 3]


def test_retry_requeues_with_the_reason(db: Database) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    queue.retry_job(db, claim, "disk hiccup")
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.queued and stored.attempt == 1 and stored.error == "disk hiccup"


def test_leases_run_on_the_database_clock_not_the_workers(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    job = queue.enqueue_job(db, SPEC, max_attempts=3)
    # This host's clock is an hour off; the database's is right.
    monkeypatch.setattr(queue, "utcnow", lambda: utcnow() - timedelta(hours=1))
    claim = queue.claim_next_job(db, "w1", 30, device="cpu")
    assert claim is not None
    expires = get_job(db, job.id).lease_expires_at
    assert expires is not None and abs(expires - (utcnow() + timedelta(seconds=30))) < timedelta(seconds=5)
    monkeypatch.setattr(queue, "utcnow", lambda: utcnow() + timedelta(hours=1))
    assert queue.requeue_expired_leases(db) == ([], []), "a live lease was taken for expired"
    queue.renew_lease(db, claim, 60)
    renewed = get_job(db, job.id).lease_expires_at
    assert renewed is not None and abs(renewed - (utcnow() + timedelta(seconds=60))) < timedelta(seconds=5)
