"""The worker process: claims jobs from the queue and trains them on one device.

Split in three: ``claim`` (queue.claim_next_job), ``run`` (a models.training.Trainer, resumed from the
job's last finished epoch when there is one, with a lease keeper heartbeating beside it) and ``persist``
(checkpoint file, then queue.finish_job). The data set is loaded once per process, onto the training
device, and shared by every job and every concurrent slot.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import torch

from models.checkpoints import save_checkpoint
from models.data import DeviceDataset, load_fashion_mnist, to_device
from models.devices import device_label
from models.spec import INPUT_FEATURES
from models.training import EpochMetrics, Trainer, TrainingStopped
from service import queue
from service.db import Database
from service.logs import job_context
from service.provenance import provenance
from service.queue import Claim, LeaseLost
from service.resume import discard_resume_state, load_resume_state, resume_path, save_resume_state
from service.retry import RetryPolicy
from service.settings import Settings
from service.wakeup import QueueSignal

log = logging.getLogger(__name__)


def configure_determinism() -> None:
    """Same spec, seed and device give the same metrics: deterministic kernels, no TF32."""
    # cuBLAS needs this set before it starts to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class DatasetCache:
    """The data set on the training device, loaded once per process and shared by all slots."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        self._dataset: DeviceDataset | None = None
        self._lock = threading.Lock()

    def get(self) -> DeviceDataset:
        with self._lock:
            if self._dataset is None:
                started = time.perf_counter()
                arrays = load_fashion_mnist(
                    self.settings.data_dir, self.settings.dataset_cache_dir, download=self.settings.download
                )
                self._dataset = to_device(arrays, self.device)
                if self.device.type == "cuda":
                    # Slots read it from their own streams: the copies and scaling must be done first.
                    torch.cuda.synchronize(self.device)
                log.info("data set loaded onto %s in %.2fs", self.device, time.perf_counter() - started)
            return self._dataset


class LeaseKeeper(threading.Thread):
    """Renews a claim's lease in the background and raises flags the training loop reads per step."""

    def __init__(self, db: Database, claim: Claim, lease_seconds: float, check_seconds: float) -> None:
        super().__init__(name=f"lease-{claim.job_id[:8]}", daemon=True)
        self.db, self.claim, self.lease_seconds = db, claim, lease_seconds
        self.check_seconds = check_seconds
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        with job_context(self.claim.job_id, self.claim.attempt):  # a thread starts with a context of its own
            self._renew_until_stopped()

    def _renew_until_stopped(self) -> None:
        last_renewal = time.monotonic()
        while not self._done.wait(self.check_seconds):
            try:
                state = queue.renew_lease(self.db, self.claim, self.lease_seconds)
            except LeaseLost:
                log.error("job %s: lease lost, stopping it", self.claim.job_id)
                self.lost.set()
                return
            except Exception:
                # A passing database error: keep training while the lease has time left, stop before it runs out.
                log.exception("job %s: lease renewal failed", self.claim.job_id)
                if time.monotonic() - last_renewal > self.lease_seconds * 2 / 3:
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
    """One slot: claims and runs one job at a time. ``WorkerPool`` runs several on one device."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        device: torch.device,
        *,
        burst: bool = False,
        retry_policy: RetryPolicy | None = None,
        datasets: DatasetCache | None = None,
        shutdown: threading.Event | None = None,
        slot: int = 0,
    ) -> None:
        self.settings, self.db, self.device, self.burst = settings, db, device, burst
        self.retry_policy = retry_policy or RetryPolicy()
        self.datasets = datasets or DatasetCache(settings, device)
        self.shutdown = shutdown or threading.Event()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{slot}"
        self.signal = QueueSignal(settings.queue_signal_path)
        self.cuda_graphs = settings.cuda_graphs and device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    # -- process life -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Initialises the device's libraries (cuBLAS, the caching allocator) for this slot's thread and
        stream, so the first job does not pay for it."""
        if self.device.type != "cuda":
            return
        with self._on_own_stream():
            layer = torch.nn.Linear(INPUT_FEATURES, 16).to(self.device)
            layer(torch.zeros(8, INPUT_FEATURES, device=self.device)).sum().backward()

    def run(self) -> int:
        log.info("worker %s on %s (burst=%s)", self.worker_id, device_label(self.device), self.burst)
        self.warm_up()
        while not self.shutdown.is_set():
            seen = self.signal.stamp()
            if self.run_once():
                continue
            if self.burst:
                log.info("queue empty, burst mode: exiting")
                break
            self.signal.wait(seen, self.settings.poll_seconds, self.shutdown)
        return 0

    def run_once(self) -> bool:
        """Reaps expired leases, then claims and runs one job. False when the queue was empty."""
        queue.requeue_expired_leases(self.db)
        claim = queue.claim_next_job(
            self.db, self.worker_id, self.settings.lease_seconds, device=device_label(self.device)
        )
        if claim is None:
            return False
        with self._on_own_stream(), job_context(claim.job_id, claim.attempt):
            self.run_job(claim)
        self._release_device_memory()
        return True

    def _release_device_memory(self) -> None:
        """Hands the ended job's cached blocks back to the driver: a cancelled, failed (out of memory
        included) or finished job leaves the GPU with only the data set on it, for the next job and for
        other processes."""
        if self.device.type == "cuda":
            gc.collect()  # a reference cycle through a traceback or a closure would keep tensors alive
            # cuBLAS keeps a workspace per handle and stream in PyTorch's allocator (32 MiB or more each);
            # empty_cache() does not drop them.
            clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear_workspaces is not None:
                clear_workspaces()
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _on_own_stream(self) -> Iterator[None]:
        # Each slot issues its work on its own CUDA stream, so concurrent jobs overlap on the device.
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            yield
        self.stream.synchronize()

    # -- one job ----------------------------------------------------------------------------------
    def dataset(self) -> DeviceDataset:
        return self.datasets.get()

    def run_job(self, claim: Claim) -> None:
        log.info("job %s: attempt %d, spec %s", claim.job_id, claim.attempt, claim.spec.model_dump_json())
        keeper = LeaseKeeper(
            self.db, claim, self.settings.lease_seconds, check_seconds=min(0.5, self.settings.lease_seconds / 4)
        )
        keeper.start()
        state_file = resume_path(self.settings.resume_dir, claim.job_id)

        def should_stop() -> bool:
            return keeper.cancel_requested.is_set() or keeper.lost.is_set() or self.shutdown.is_set()

        try:
            dataset = self.dataset()
            trainer = Trainer(claim.spec, dataset, seed=claim.seed, cuda_graphs=self.cuda_graphs)
            saved = load_resume_state(state_file, claim)
            if saved is not None:
                trainer.restore(*saved)
                log.info("job %s: resuming after epoch %d", claim.job_id, trainer.epoch)
            queue.begin_attempt(
                self.db,
                claim,
                trainer.history,
                {
                    **provenance(device_label(self.device), dataset.file_sha256, trainer.use_graphs),
                    "resumed_from_epoch": trainer.epoch,
                    "train_samples": trainer.n_train,  # for samples/s (GET /metrics): an epoch's seconds are stored
                },
            )

            def epoch_done(metrics: EpochMetrics) -> None:
                save_resume_state(state_file, claim, *trainer.state())
                queue.record_epoch(self.db, claim, metrics)

            result = trainer.run(on_epoch=epoch_done, should_stop=should_stop)
        except TrainingStopped as stopped:
            keeper.stop()
            self._stopped(claim, keeper, stopped, state_file)
            return
        except LeaseLost:
            keeper.stop()
            log.error("job %s: lease lost mid-run; abandoning it", claim.job_id)
            return
        except Exception as error:
            keeper.stop()
            self._failed(claim, error, state_file)
            return
        keeper.stop()
        self._persist(claim, result.model, result.selected, state_file)

    def _stopped(self, claim: Claim, keeper: LeaseKeeper, stopped: TrainingStopped, state_file: Path) -> None:
        try:
            if keeper.lost.is_set():
                log.error("job %s: lease lost; abandoning it", claim.job_id)
            elif keeper.cancel_requested.is_set():
                queue.cancel_claimed_job(self.db, claim)
                discard_resume_state(state_file)
                log.info("job %s: cancelled after %d epoch(s)", claim.job_id, stopped.completed_epochs)
            else:
                queue.release_job(self.db, claim)
                log.info("job %s: released to the queue after %d epoch(s)", claim.job_id, stopped.completed_epochs)
        except LeaseLost:
            log.error("job %s: lease lost before it could be stopped cleanly", claim.job_id)

    def _failed(self, claim: Claim, error: Exception, state_file: Path) -> None:
        decision = self.retry_policy.decide(error, claim.attempt, claim.max_attempts)
        log.error("job %s: %s", claim.job_id, decision.reason, exc_info=not isinstance(error, ValueError))
        try:
            if decision.retry:
                queue.retry_job(self.db, claim, decision.reason)
            else:
                queue.fail_job(self.db, claim, decision.reason)
                discard_resume_state(state_file)
        except LeaseLost:
            log.error("job %s: lease lost before its failure could be recorded", claim.job_id)

    def _persist(self, claim: Claim, model: torch.nn.Module, selected: EpochMetrics | None, state_file: Path) -> None:
        model_id = queue.new_id()
        path = self.settings.checkpoint_dir / f"{model_id}.safetensors"
        try:
            saved = save_checkpoint(path, model, claim.spec, extra={"job_id": claim.job_id, "seed": str(claim.seed)})
        except Exception as error:
            self._failed(claim, error, state_file)
            return
        try:
            queue.finish_job(
                self.db, claim, model_id=model_id, sha256=saved.sha256, size_bytes=saved.size_bytes, selected=selected
            )
        except LeaseLost:
            path.unlink(missing_ok=True)
            log.error("job %s: lease lost before the model could be registered; checkpoint removed", claim.job_id)
            return
        discard_resume_state(state_file)
        log.info("job %s: succeeded, model %s (%s)", claim.job_id, model_id, selected)


class WorkerPool:
    """``concurrency`` worker slots in threads of this process, sharing one device and its data set."""

    def __init__(
        self, settings: Settings, db: Database, device: torch.device, *, concurrency: int, burst: bool
    ) -> None:
        self.shutdown = threading.Event()
        datasets = DatasetCache(settings, device)
        self.workers = [
            Worker(settings, db, device, burst=burst, datasets=datasets, shutdown=self.shutdown, slot=slot)
            for slot in range(concurrency)
        ]
        self.datasets = datasets

    def install_signal_handlers(self) -> None:
        def _handle(signum: int, _frame: FrameType | None) -> None:
            if self.shutdown.is_set():
                raise KeyboardInterrupt
            log.info("signal %s: finishing the current step, then exiting", signal.Signals(signum).name)
            self.shutdown.set()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)

    def preload(self) -> None:
        """Loads the data set before the first claim, so a job's time is its training."""
        try:
            self.datasets.get()
        except Exception as exc:  # the jobs will fail with this message; the worker keeps serving the queue
            log.error("data set not loaded: %s", exc)

    def run(self) -> int:
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
