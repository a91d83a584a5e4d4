"""The worker process: claims jobs from the queue and has its trainer process train them on one device.

Split in three: ``claim`` (queue.claim_next_job), ``run`` (the job goes to the trainer process,
``service/worker/trainer.py``, while a lease keeper heartbeats beside it and the worker records each epoch
it reports, publishing its resume state) and ``persist`` (queue.finish_job publishes the checkpoint the
trainer made and registers its model). The worker holds the lease and is the only one to write to the
database and the artifact store (service/store/artifacts.py); the trainer process holds the device and the
data set, loaded once, and writes nothing. A trainer that crashes or loses its device costs only the job it
was running: the worker records the failure (or a retry, as its retry policy decides) and starts a new
trainer for the next job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

import torch

from models.checkpoints import STALE_TEMPORARY_SECONDS, sweep_temporary_files
from service.jobs import queue, studies
from service.jobs.queue import Claim, LeaseLost
from service.jobs.status import JobStatus
from service.jobs.wakeup import QueueSignal
from service.logs import job_context
from service.settings import Settings
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.worker.retry import RetryPolicy
from service.worker.trainer import (
    AttemptBegun,
    Died,
    EpochFinished,
    Failed,
    Outcome,
    Progress,
    SlotIdle,
    Stopped,
    Trained,
    TrainerConfig,
    TrainerCrashed,
    TrainerProcess,
    TrainerUnavailable,
    TrainingJob,
)

log = logging.getLogger(__name__)

# A trainer that cannot be started this many times in a row means a broken device or install: the worker exits.
MAX_TRAINER_START_FAILURES = 3


@dataclass(frozen=True)
class LeaseFlags:
    """What the lease keeper has seen of one claim: a cancel asked for, the lease lost."""

    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class LeaseKeeper(threading.Thread):
    """Renews the leases of the claims a slot runs (one job, or a pack) in the background, one transaction per
    heartbeat, and raises each claim's flags, which the training loop reads per step."""

    def __init__(self, db: Database, claims: list[Claim], lease_seconds: float, check_seconds: float) -> None:
        super().__init__(name=f"lease-{claims[0].job_id[:8]}", daemon=True)
        self.db, self.claims, self.lease_seconds = db, claims, lease_seconds
        self.check_seconds = check_seconds
        self.flags = [LeaseFlags() for _ in claims]
        self._held = set(range(len(claims)))  # the claims still renewed
        self._lock = threading.Lock()
        self._done = threading.Event()

    def run(self) -> None:
        first = self.claims[0]
        with job_context(first.job_id, first.attempt):  # a thread starts with a context of its own
            self._renew_until_stopped()

    def release(self, member: int) -> None:
        """Stops renewing ``member``'s lease: its job has ended."""
        with self._lock:
            self._held.discard(member)

    def _renew_until_stopped(self) -> None:
        last_renewal = time.monotonic()
        while not self._done.wait(self.check_seconds):
            with self._lock:
                members = sorted(self._held)
            if not members:
                continue
            try:
                states = queue.renew_leases(self.db, [self.claims[member] for member in members], self.lease_seconds)
            except Exception:
                # A passing database error: keep training while the leases have time left, stop before they run out.
                log.exception("lease renewal failed for %d job(s)", len(members))
                if time.monotonic() - last_renewal > self.lease_seconds * 2 / 3:
                    for member in members:
                        self.flags[member].lost.set()
                    return
                continue
            last_renewal = time.monotonic()
            for member, state in zip(members, states, strict=True):
                if state is None:
                    log.error("job %s: lease lost, stopping it", self.claims[member].job_id)
                    self.flags[member].lost.set()
                    self.release(member)
                elif state.cancel_requested:
                    self.flags[member].cancel_requested.set()

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()


def sweep_stale_temporary_files(settings: Settings) -> int:
    """Removes the checkpoint and resume folders' temporary files left by writes that a killed process (kill -9,
    a power cut) never finished, once they are ``STALE_TEMPORARY_SECONDS`` old; returns how many."""
    removed = [
        path
        for folder in (settings.checkpoint_dir, settings.resume_dir)
        for path in sweep_temporary_files(folder, STALE_TEMPORARY_SECONDS)
    ]
    for path in removed:
        log.info("removed %s, left by an interrupted write", path)
    return len(removed)


class Worker:
    """One slot: claims and runs one job at a time. ``WorkerPool`` runs several on one device, sharing one
    trainer process; a lone ``Worker`` starts a trainer process of its own (``close`` stops it)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        device: torch.device,
        *,
        burst: bool = False,
        retry_policy: RetryPolicy | None = None,
        trainer: TrainerProcess | None = None,
        shutdown: threading.Event | None = None,
        slot: int = 0,
    ) -> None:
        self.settings, self.db, self.device, self.burst = settings, db, device, burst
        self.artifacts = ArtifactStore.for_settings(settings)
        self.retry_policy = retry_policy or RetryPolicy()
        self.owns_trainer = trainer is None
        self.trainer = trainer or TrainerProcess(TrainerConfig.for_worker(settings, device, slots=1))
        self.slot = slot
        self.shutdown = shutdown or threading.Event()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{slot}"
        self.signal = QueueSignal(settings.queue_signal_path)
        self.last_idle: SlotIdle | None = None  # what the trainer's slot reported after the last job

    # -- process life -----------------------------------------------------------------------------
    def run(self) -> int:
        log.info("worker %s on %s (burst=%s)", self.worker_id, self.device, self.burst)
        try:
            while not self.shutdown.is_set():
                seen = self.signal.stamp()
                if self.run_once():
                    continue
                if self.burst:
                    log.info("queue empty, burst mode: exiting")
                    break
                self.signal.wait(seen, self.settings.poll_seconds, self.shutdown)
        finally:
            if self.owns_trainer:
                self.trainer.close()
        return 0

    def close(self) -> None:
        """Stops the trainer process, if this worker started it."""
        if self.owns_trainer:
            self.trainer.close()

    def run_once(self) -> bool:
        """Reaps expired leases, then claims and runs one job. False when the queue was empty.

        The trainer process is started (or replaced) before the claim, so a job never waits for it.
        Raises TrainerUnavailable when it cannot be started.
        """
        device = self._trainer_device()
        queue.requeue_expired_leases(self.db)
        self._advance_studies()
        claims = queue.claim_jobs(
            self.db, self.worker_id, self.settings.lease_seconds, device=device, limit=self.settings.pack_max
        )
        if not claims:
            return False
        with job_context(claims[0].job_id, claims[0].attempt):
            self.run_jobs(claims)
        return True

    def _advance_studies(self, study_id: str | None = None) -> None:
        """Queues the next trials of one study (a trial of it just ended) or of every running one (a poll: a
        study whose deciding process died is topped up here). Never fatal: the next poll tries again."""
        try:
            added = len(queue.advance_study(self.db, study_id)) if study_id else queue.advance_studies(self.db)
        except Exception:
            log.exception("could not advance %s", f"study {study_id}" if study_id else "the running studies")
            return
        if added:
            self.signal.notify()

    def _trainer_device(self) -> str:
        failures = 0
        while True:
            try:
                return self.trainer.device_label
            except TrainerUnavailable as error:
                failures += 1
                log.error("%s (%d of %d)", error, failures, MAX_TRAINER_START_FAILURES)
                if failures >= MAX_TRAINER_START_FAILURES or self.shutdown.is_set():
                    raise
                time.sleep(min(2.0**failures, 30.0))

    # -- one job, or a pack of them ------------------------------------------------------------------
    def run_jobs(self, claims: list[Claim]) -> None:
        """Runs the claimed jobs (one, or a pack that trains together) and ends each as its own outcome says."""
        for claim in claims:
            log.info("job %s: attempt %d, spec %s", claim.job_id, claim.attempt, claim.spec.model_dump_json())
        if len(claims) > 1:
            log.info("packed %d jobs: %s", len(claims), ", ".join(claim.job_id for claim in claims))
        check_seconds = min(0.5, self.settings.lease_seconds / 4)
        keeper = LeaseKeeper(self.db, claims, self.settings.lease_seconds, check_seconds)
        keeper.start()
        jobs = [TrainingJob(claim, self._resume_state(claim)) for claim in claims]
        # Per job, the first database error while recording its progress (a lost lease, or another): it stops.
        broken: list[Exception | None] = [None] * len(claims)
        # Per study trial, the epoch after which its study's pruner stopped it.
        pruned: list[int | None] = [None] * len(claims)

        def record(member: int, message: Progress) -> None:
            if broken[member] is not None or pruned[member] is not None:
                return  # broken, or pruned: the epochs a trainer ran ahead before it saw the flag are not kept
            try:
                if isinstance(message, AttemptBegun):
                    queue.begin_attempt(self.db, claims[member], message.history, message.provenance)
                elif isinstance(message, EpochFinished):
                    queue.record_epoch(
                        self.db,
                        claims[member],
                        message.metrics,
                        resume_state=message.resume_state,
                        artifacts=self.artifacts,
                    )
            except Exception as error:
                broken[member] = error
                return
            if isinstance(message, EpochFinished):
                pruned[member] = self._pruned_after(claims[member], message.metrics.epoch)

        def should_stop(member: int) -> bool:
            flags = keeper.flags[member]
            return (
                broken[member] is not None
                or pruned[member] is not None
                or flags.cancel_requested.is_set()
                or flags.lost.is_set()
                or self.shutdown.is_set()
            )

        # A member of a pack ends as soon as its outcome comes (cancelled, or stopped early, while the others
        # train on); a lone job once its slot is idle, its device memory given back. An error in ending one
        # (the database down) is raised once the slot is idle, not in the middle.
        errors: list[Exception] = []
        packed = len(claims) > 1

        def conclude(member: int, outcome: Outcome) -> None:
            claim = claims[member]
            keeper.release(member)
            try:
                with job_context(claim.job_id, claim.attempt):
                    self._conclude(claim, outcome, keeper.flags[member], broken[member], pruned[member])
            except Exception as error:
                errors.append(error)
            if claim.study_id is not None:
                self._advance_studies(claim.study_id)  # a trial ended or left the queue: its study asks for the next

        try:
            outcomes, idle = self.trainer.run(
                self.slot, jobs, record, should_stop, on_outcome=conclude if packed else None
            )
        finally:
            keeper.stop()
        if idle is not None:
            self.last_idle = idle
        if not packed:
            conclude(0, outcomes[0])
        if errors:
            raise errors[0]

    def _resume_state(self, claim: Claim) -> bytes | None:
        """The state an earlier claim of the job published (a job with recorded epochs has one), else None.
        Never fatal: a state that cannot be read (the database, a missing or altered artifact) is logged and
        the attempt starts over."""
        if claim.epochs_done == 0:
            return None
        try:
            return self.artifacts.resume_state(self.db, claim.job_id, claim.token)
        except Exception:
            log.exception("job %s: the resume state could not be read; starting over", claim.job_id)
            return None

    def _discard_resume_state(self, claim: Claim) -> None:
        """Drops the ended job's resume state; one left by a failure here is retention's (fmnist gc)."""
        try:
            with self.db.write() as session:
                self.artifacts.forget(session, ArtifactKind.resume, [claim.job_id])
        except Exception:
            log.exception("job %s: its resume state could not be dropped; fmnist gc will", claim.job_id)

    def _pruned_after(self, claim: Claim, epoch: int) -> int | None:
        """``epoch`` when the claim is a study's trial that its pruner stops after this epoch, else None (also
        after the last epoch: a trial that has run to its end is complete, not pruned)."""
        if claim.study_id is None or epoch >= claim.spec.epochs:
            return None
        try:
            return epoch if studies.should_prune(self.db, claim.job_id, epoch) else None
        except Exception:
            log.exception("job %s: the pruner could not decide after epoch %d; the trial goes on", claim.job_id, epoch)
            return None

    def _conclude(
        self,
        claim: Claim,
        outcome: Outcome,
        lease: LeaseFlags,
        broken: Exception | None,
        pruned_at: int | None = None,
    ) -> None:
        if isinstance(broken, LeaseLost) or lease.lost.is_set():
            log.error("job %s: lease lost mid-run; abandoning it", claim.job_id)
        elif broken is not None:
            self._failed(claim, broken)
        elif pruned_at is not None and isinstance(outcome, (Trained, Stopped)):
            # Pruned, whether the trainer saw the flag or had already run to its end (it runs ahead of the
            # decision, which follows each epoch's record): the trial ends where its pruner stopped it.
            self._pruned(claim, pruned_at)
        elif isinstance(outcome, Trained):
            self._persist(claim, outcome)
        elif isinstance(outcome, Stopped):
            self._stopped(claim, lease, outcome)
        elif isinstance(outcome, Failed):
            self._failed(claim, outcome.error)
        else:
            assert isinstance(outcome, Died)
            self._failed(claim, TrainerCrashed(outcome.description))

    def _stopped(self, claim: Claim, lease: LeaseFlags, stopped: Stopped) -> None:
        try:
            if lease.cancel_requested.is_set():
                queue.cancel_claimed_job(self.db, claim)
                self._discard_resume_state(claim)
                log.info("job %s: cancelled after %d epoch(s)", claim.job_id, stopped.completed_epochs)
            elif queue.release_job(self.db, claim) is JobStatus.cancelled:
                self._discard_resume_state(claim)
                log.info("job %s: cancelled after %d epoch(s)", claim.job_id, stopped.completed_epochs)
            else:
                log.info("job %s: released to the queue after %d epoch(s)", claim.job_id, stopped.completed_epochs)
        except LeaseLost:
            log.error("job %s: lease lost before it could be stopped cleanly", claim.job_id)

    def _pruned(self, claim: Claim, epoch: int) -> None:
        try:
            status = queue.prune_claimed_job(self.db, claim, epoch)
        except LeaseLost:
            log.error("job %s: lease lost before its pruning could be recorded", claim.job_id)
            return
        self._discard_resume_state(claim)
        log.info("job %s: %s after epoch %d", claim.job_id, status.value, epoch)

    def _failed(self, claim: Claim, error: BaseException) -> None:
        decision = self.retry_policy.decide(error, claim.attempt, claim.max_attempts)
        log.error("job %s: %s", claim.job_id, decision.reason)
        try:
            if decision.retry:
                status = queue.retry_job(self.db, claim, decision.reason)
            else:
                status = queue.fail_job(self.db, claim, decision.reason)
        except LeaseLost:
            log.error("job %s: lease lost before its failure could be recorded", claim.job_id)
            return
        if status is not JobStatus.queued:
            self._discard_resume_state(claim)
        if status is JobStatus.cancelled:
            log.info("job %s: cancelled (its cancel had been asked for)", claim.job_id)

    def _persist(self, claim: Claim, trained: Trained) -> None:
        model_id = queue.new_id()
        try:
            status = queue.finish_job(
                self.db,
                claim,
                model_id=model_id,
                checkpoint=trained.checkpoint,
                artifacts=self.artifacts,
                selected=trained.selected,
                evaluation=trained.evaluation,
            )
        except LeaseLost:
            log.error("job %s: lease lost before the model could be registered; nothing published", claim.job_id)
            return
        if status is JobStatus.cancelled:
            log.info("job %s: cancelled as it finished; no model registered", claim.job_id)
            return
        log.info("job %s: succeeded, model %s (%s)", claim.job_id, model_id, trained.selected)


class WorkerPool:
    """``concurrency`` worker slots in threads of this process, sharing one device through one trainer process
    (one data set, one CUDA context; each slot on its own CUDA stream there)."""

    def __init__(
        self, settings: Settings, db: Database, device: torch.device, *, concurrency: int, burst: bool
    ) -> None:
        self.shutdown = threading.Event()
        self.trainer = TrainerProcess(TrainerConfig.for_worker(settings, device, slots=concurrency))
        self.workers = [
            Worker(settings, db, device, burst=burst, trainer=self.trainer, shutdown=self.shutdown, slot=slot)
            for slot in range(concurrency)
        ]

    def install_signal_handlers(self) -> None:
        def _handle(signum: int, _frame: FrameType | None) -> None:
            if self.shutdown.is_set():
                raise KeyboardInterrupt
            log.info("signal %s: finishing the current step, then exiting", signal.Signals(signum).name)
            self.shutdown.set()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)

    def preload(self) -> None:
        """Starts the trainer process, which loads the data set, before the first claim: a job's time is its
        training. A data set that cannot be loaded fails the jobs with its message; the worker keeps serving."""
        try:
            self.trainer.ensure_running()
        except TrainerUnavailable as exc:
            log.error("%s; retrying before the first claim", exc)

    def run(self) -> int:
        sweep_stale_temporary_files(self.workers[0].settings)
        try:
            if len(self.workers) == 1:
                return self.workers[0].run()
            threads = [threading.Thread(target=w.run, name=f"slot-{i}") for i, w in enumerate(self.workers)]
            for thread in threads:
                thread.start()
            # Join with a timeout so the main thread stays free to take signals.
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=0.2)
            return 0
        finally:
            self.trainer.close()
