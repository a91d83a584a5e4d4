"""The worker process: claims jobs from the queue and trains them on one device.

Split in three: ``claim`` (queue.claim_next_job), ``run`` (models.training.train, with a lease keeper
heartbeating beside it) and ``persist`` (checkpoint file, then queue.finish_job). The data set is loaded
once per process, onto the training device, and reused by every job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from types import FrameType

import torch

from models.checkpoints import save_checkpoint
from models.data import DeviceDataset, load_fashion_mnist, to_device
from models.training import TrainingStopped, train
from service import queue
from service.db import Database
from service.queue import Claim, LeaseLost
from service.retry import RetryPolicy
from service.settings import Settings

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; ``cuda:N`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(device)}"
    return "cpu"


class LeaseKeeper(threading.Thread):
    """Renews a claim's lease in the background and raises flags the training loop reads per batch."""

    def __init__(self, db: Database, claim: Claim, lease_seconds: float, check_seconds: float) -> None:
        super().__init__(name=f"lease-{claim.job_id[:8]}", daemon=True)
        self.db, self.claim, self.lease_seconds = db, claim, lease_seconds
        self.check_seconds = check_seconds
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        renew_every = self.lease_seconds / 3
        last_renewal = time.monotonic()
        while not self._done.wait(self.check_seconds):
            try:
                state = queue.renew_lease(self.db, self.claim, self.lease_seconds)
            except LeaseLost:
                log.error("job %s: lease lost, stopping it", self.claim.job_id)
                self.lost.set()
                return
            except Exception:
                # A passing database error: keep training while the lease has time left.
                log.exception("job %s: lease renewal failed", self.claim.job_id)
                if time.monotonic() - last_renewal > self.lease_seconds - renew_every:
                    self.lost.set()
                    return
                continue
            last_renewal = time.monotonic()
            if state.cancel_requested:
                self.cancel_requested.set()

    def stop(self) -> None:
        self._done.set()
        self.join()


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        device: torch.device,
        *,
        burst: bool = False,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.settings, self.db, self.device, self.burst = settings, db, device, burst
        self.retry_policy = retry_policy or RetryPolicy()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.shutdown = threading.Event()
        self._dataset: DeviceDataset | None = None

    # -- process life -----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def _handle(signum: int, _frame: FrameType | None) -> None:
            if self.shutdown.is_set():
                raise KeyboardInterrupt
            log.info("signal %s: finishing the current batch, then exiting", signal.Signals(signum).name)
            self.shutdown.set()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)

    def run(self) -> int:
        log.info("worker %s on %s (burst=%s)", self.worker_id, device_label(self.device), self.burst)
        while not self.shutdown.is_set():
            if self.run_once():
                continue
            if self.burst:
                log.info("queue empty, burst mode: exiting")
                break
            self.shutdown.wait(self.settings.poll_seconds)
        return 0

    def run_once(self) -> bool:
        """Reaps expired leases, then claims and runs one job. False when the queue was empty."""
        queue.requeue_expired_leases(self.db)
        claim = queue.claim_next_job(
            self.db, self.worker_id, self.settings.lease_seconds, device=device_label(self.device)
        )
        if claim is None:
            return False
        self.run_job(claim)
        return True

    # -- one job ----------------------------------------------------------------------------------
    def dataset(self) -> DeviceDataset:
        if self._dataset is None:
            started = time.perf_counter()
            arrays = load_fashion_mnist(
                self.settings.data_dir, self.settings.dataset_cache_dir, download=self.settings.download
            )
            self._dataset = to_device(arrays, self.device)
            log.info("data set loaded onto %s in %.2fs", self.device, time.perf_counter() - started)
        return self._dataset

    def run_job(self, claim: Claim) -> None:
        log.info("job %s: attempt %d, spec %s", claim.job_id, claim.attempt, claim.spec.model_dump_json())
        keeper = LeaseKeeper(
            self.db, claim, self.settings.lease_seconds, check_seconds=min(0.5, self.settings.lease_seconds / 4)
        )
        keeper.start()

        def should_stop() -> bool:
            return keeper.cancel_requested.is_set() or keeper.lost.is_set() or self.shutdown.is_set()

        try:
            result = train(
                claim.spec,
                self.dataset(),
                seed=claim.seed,
                on_epoch=lambda metrics: queue.record_epoch(self.db, claim, metrics),
                should_stop=should_stop,
            )
        except TrainingStopped as stopped:
            keeper.stop()
            self._stopped(claim, keeper, stopped)
            return
        except LeaseLost:
            keeper.stop()
            log.error("job %s: lease lost mid-run; abandoning it", claim.job_id)
            return
        except Exception as error:
            keeper.stop()
            self._failed(claim, error)
            return
        keeper.stop()
        self._persist(claim, result.model, result.test_acc)

    def _stopped(self, claim: Claim, keeper: LeaseKeeper, stopped: TrainingStopped) -> None:
        try:
            if keeper.lost.is_set():
                log.error("job %s: lease lost; abandoning it", claim.job_id)
            elif keeper.cancel_requested.is_set():
                queue.cancel_claimed_job(self.db, claim)
                log.info("job %s: cancelled after %d epoch(s)", claim.job_id, stopped.completed_epochs)
            else:
                queue.release_job(self.db, claim)
                log.info("job %s: released back to the queue for shutdown", claim.job_id)
        except LeaseLost:
            log.error("job %s: lease lost before it could be stopped cleanly", claim.job_id)

    def _failed(self, claim: Claim, error: Exception) -> None:
        decision = self.retry_policy.decide(error, claim.attempt, claim.max_attempts)
        log.error("job %s: %s", claim.job_id, decision.reason, exc_info=not isinstance(error, ValueError))
        try:
            if decision.retry:
                queue.retry_job(self.db, claim, decision.reason)
            else:
                queue.fail_job(self.db, claim, decision.reason)
        except LeaseLost:
            log.error("job %s: lease lost before its failure could be recorded", claim.job_id)

    def _persist(self, claim: Claim, model: torch.nn.Module, test_acc: float | None) -> None:
        model_id = queue.new_id()
        path = self.settings.checkpoint_dir / f"{model_id}.safetensors"
        try:
            saved = save_checkpoint(path, model, claim.spec, extra={"job_id": claim.job_id, "seed": str(claim.seed)})
        except Exception as error:
            self._failed(claim, error)
            return
        try:
            queue.finish_job(
                self.db, claim, model_id=model_id, sha256=saved.sha256, size_bytes=saved.size_bytes, test_acc=test_acc
            )
        except LeaseLost:
            path.unlink(missing_ok=True)
            log.error("job %s: lease lost before the model could be registered; checkpoint removed", claim.job_id)
            return
        log.info("job %s: succeeded, model %s (test_acc=%s)", claim.job_id, model_id, test_acc)
