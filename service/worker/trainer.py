"""The trainer process: the worker's child that holds the device, so that a crash there costs one job, not
the worker.

Some failures cannot be caught where they happen: an illegal memory access or a device-side assert poisons
the CUDA context for the life of the process, and a destructor that throws during CUDA clean-up aborts it
(``terminate called after throwing an instance of 'c10::Error'``). So the process that holds the job's lease
and talks to the database (the worker, ``service/worker/worker.py``) is not the one that holds the CUDA context: a
long-lived child does the training. It loads the data set and warms the device up once, then trains one job
after another (slot 0 on its main thread, any further worker slot on a thread of its own, each on its own CUDA
stream), reporting each job's progress through a pipe. Only the worker writes to the database.

When the child dies (a signal, ``abort()``) or reports that its device is no longer usable, the job it was
running ends with ``TrainerCrashed`` (the retry policy decides: another attempt, or failed), and the worker
starts a new child before it claims the next job. The happy path pays nothing per job: no process start, no
data load, no cuBLAS warm-up; a job costs a few small messages.

Children come from a fork server (``multiprocessing``'s ``forkserver``) that has imported torch already, so
starting or replacing one takes tens of milliseconds plus the data set's load, and the worker itself never
creates a CUDA context. A child exits when its pipe closes, which includes the worker dying.

Messages, all picklable dataclasses: the worker sends ``(slot, TrainingJob)``; the child answers with
``(slot, message)``: ``AttemptBegun``, then one ``EpochFinished`` per epoch, then one end (``Trained``,
``Stopped`` or ``Failed``), then ``SlotIdle`` once the slot has handed its memory back.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import torch

from models.checkpoints import checkpoint_bytes
from models.data import DeviceDataset, load_fashion_mnist, to_device
from models.devices import device_label
from models.evaluation import evaluate_model, evaluation_sets
from models.packed import MemberOutcome, PackedTrainer
from models.spec import INPUT_FEATURES
from models.training import EpochMetrics, Trainer, TrainingStopped
from service.jobs.queue import Claim
from service.logs import configure_logging, job_context, logging_configuration
from service.settings import FaultInjection, Settings
from service.worker.provenance import provenance
from service.worker.resume import parse_resume_state, resume_state_bytes
from service.worker.retry import TransientJobError, describe

log = logging.getLogger(__name__)

# How often a worker slot waiting on its job looks at its stop conditions (cancel, lease, shutdown).
STOP_POLL_SECONDS = 0.05
# How long a new child may take to load the data set and warm up before the worker gives up on it.
START_TIMEOUT_SECONDS = 600.0
# What the fork server imports before it forks a trainer (service/cli/server.py starts it with the same list): the
# program's main module (multiprocessing runs it in every child otherwise), and torch, this module and the
# deterministic-kernels switch (service/worker/fork_server.py).
FORK_SERVER_PRELOAD = ["__main__", "service.worker.fork_server"]
# Exit status of a child that found its device unusable after a job's error.
DEVICE_LOST_EXIT = 70


class TrainerCrashed(TransientJobError):
    """The trainer process died, or lost its device, while it ran the job."""


class TrainerUnavailable(RuntimeError):
    """A trainer process could not be started (or died while starting); the message says why."""


def fire(fault: FaultInjection, device: torch.device) -> None:
    """Fails on purpose, as ``fault`` (a test-only setting) says."""
    log.warning("injected fault: %s", fault.kind)
    logging_flush()
    if fault.kind == "raise":
        raise RuntimeError("injected fault (FMNIST_FAULT_INJECTION)")
    if fault.kind == "oserror":
        raise OSError("injected I/O fault (FMNIST_FAULT_INJECTION)")
    if fault.kind == "abort":
        os.abort()
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    values = torch.zeros(4, device=device)
    values[torch.tensor([1 << 30], device=device)].sum().item()


def _fault_applies(fault: FaultInjection | None, claim: Claim, epoch: int) -> bool:
    return (
        fault is not None
        and claim.seed == fault.seed
        and epoch >= fault.after_epoch
        and (fault.attempt is None or claim.attempt == fault.attempt)
    )


def logging_flush() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()


# -- messages ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingJob:
    """What the child needs to run one attempt of a claimed job: the claim, and the resume state (safetensors
    bytes, service/worker/resume.py) an earlier attempt published, if any. The child writes nothing: what it
    makes (resume states, the checkpoint) goes back to the worker in its messages, and the worker publishes it."""

    claim: Claim
    resume_state: bytes | None = None


@dataclass(frozen=True)
class Ready:
    """The child has loaded the data set (or failed to: jobs then fail with ``dataset_error``) and warmed up."""

    pid: int
    device_label: str
    dataset_error: str | None


@dataclass(frozen=True)
class AttemptBegun:
    """The attempt's starting point: the epochs a resume state brought back (none when it starts over)."""

    history: list[EpochMetrics]
    provenance: dict[str, Any]


@dataclass(frozen=True)
class EpochFinished:
    """One epoch done; ``resume_state``: the run's state after it (service/worker/resume.py), for the worker to
    publish with the epoch's metrics."""

    metrics: EpochMetrics
    resume_state: bytes


@dataclass(frozen=True)
class Trained:
    """The run ended; ``checkpoint``: the kept weights as a checkpoint (models.checkpoints.checkpoint_bytes);
    ``evaluation``: their evaluation (models/evaluation.py) on the test split and the validation rows, None if it
    could not be made."""

    selected: EpochMetrics | None
    checkpoint: bytes
    evaluation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stopped:
    """The run stopped because the worker asked (cancel, lost lease, shutdown)."""

    completed_epochs: int


@dataclass(frozen=True)
class Failed:
    """The run raised ``error``; ``device_lost``: the device is unusable since, and the child exits."""

    error: BaseException
    device_lost: bool = False


@dataclass(frozen=True)
class DeviceMemory:
    """The child's CUDA memory after a job was cleaned up, and the most it held during the job (bytes)."""

    allocated: int
    reserved: int
    peak_allocated: int


@dataclass(frozen=True)
class SlotIdle:
    """The slot has cleaned up after its job and takes the next."""

    memory: DeviceMemory | None
    dataset_loads: int


@dataclass(frozen=True)
class Died:
    """Made by the worker's side: the child's pipe closed before the job ended."""

    description: str


Progress = AttemptBegun | EpochFinished
Outcome = Trained | Stopped | Failed | Died


@dataclass(frozen=True)
class ForMember:
    """A message about one member of the pack a slot runs (``member``: its index in the pack)."""

    member: int
    message: Progress | Trained | Stopped | Failed


@dataclass(frozen=True)
class TrainerConfig:
    """How to run a trainer process: device, slots, data set, and the few settings it needs."""

    device: str
    slots: int
    data_dir: Path | None
    dataset_cache_dir: Path
    download: bool
    cuda_graphs: bool
    pack_max: int = 1
    gpu_memory_fraction: float = 1.0
    fault_injection: FaultInjection | None = None
    logging: tuple[str, Literal["text", "json"]] | None = None

    @classmethod
    def for_worker(cls, settings: Settings, device: torch.device, slots: int) -> TrainerConfig:
        """The trainer of a worker with ``slots`` slots on ``device``, logging as this process does."""
        return cls(
            device=str(device),
            slots=slots,
            data_dir=settings.data_dir,
            dataset_cache_dir=settings.dataset_cache_dir,
            download=settings.download,
            cuda_graphs=settings.cuda_graphs,
            pack_max=settings.pack_max,
            gpu_memory_fraction=settings.gpu_memory_fraction,
            fault_injection=settings.fault_injection,
            logging=logging_configuration(),
        )


# -- the child --------------------------------------------------------------------------------------------
def configure_determinism() -> None:
    """Same spec, seed and device give the same metrics: deterministic kernels, no TF32."""
    # cuBLAS needs this set before it starts to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class DatasetCache:
    """The data set on the training device, loaded once per process and shared by its slots."""

    def __init__(self, config: TrainerConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.loads = 0
        self._dataset: DeviceDataset | None = None
        self._lock = threading.Lock()

    def get(self) -> DeviceDataset:
        with self._lock:
            if self._dataset is None:
                started = time.perf_counter()
                arrays = load_fashion_mnist(
                    self.config.data_dir, self.config.dataset_cache_dir, download=self.config.download
                )
                self._dataset = to_device(arrays, self.device)
                if self.device.type == "cuda":
                    # Slots read it from their own streams: the copies and scaling must be done first.
                    torch.cuda.synchronize(self.device)
                self.loads += 1
                log.info("data set loaded onto %s in %.2fs", self.device, time.perf_counter() - started)
            return self._dataset


class _Sender:
    """The child's end of the pipe, shared by its slot threads."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, slot: int, message: object) -> None:
        with self._lock:
            self.conn.send((slot, message))


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling both ways (the retry policy reads its type), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(describe(error))
    return error


def _device_usable(device: torch.device) -> bool:
    """False once the CUDA context is poisoned (an illegal memory access, a device-side assert): such an error
    is sticky, so synchronising reports it again. Nothing is allocated: after an out-of-memory error that could
    fail for another reason."""
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
    except Exception:
        return False
    return True


class _Slot:
    """One slot of the child: a thread (and on a GPU a CUDA stream) that runs the jobs sent to that slot."""

    def __init__(
        self,
        index: int,
        config: TrainerConfig,
        device: torch.device,
        datasets: DatasetCache,
        stop: Any,
        sender: _Sender,
    ) -> None:
        self.index, self.config, self.device = index, config, device
        self.datasets, self.stop, self.sender = datasets, stop, sender
        self.jobs: queue.SimpleQueue[tuple[TrainingJob, ...]] = queue.SimpleQueue()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.warmed_up = threading.Event()

    @contextlib.contextmanager
    def _on_own_stream(self) -> Iterator[None]:
        # Each slot issues its work on its own CUDA stream, so concurrent jobs overlap on the device.
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            yield

    def _warm_up(self) -> None:
        """Initialises cuBLAS (its handles are per thread) and the caching allocator for this slot's thread and
        stream, so that no job pays for it."""
        if self.stream is None:
            return
        with self._on_own_stream():
            layer = torch.nn.Linear(INPUT_FEATURES, 16).to(self.device)
            layer(torch.zeros(8, INPUT_FEATURES, device=self.device)).sum().backward()
        self.stream.synchronize()

    def start(self) -> None:
        """Serves this slot's jobs from a thread of its own, once it has warmed up there."""
        threading.Thread(target=self.serve, name=f"trainer-slot-{self.index}", daemon=True).start()

    def serve(self) -> None:
        """Warms up, then runs this slot's jobs, in the calling thread, for the life of the process."""
        self.serve_after(lambda: None)

    def serve_after(self, warmed_up: Callable[[], None]) -> None:
        """``serve``, calling ``warmed_up`` once the slot is warm, before its first job."""
        try:
            try:
                self._warm_up()
            finally:
                self.warmed_up.set()
            warmed_up()
            while True:
                self._serve_one(self.jobs.get())
        except BaseException:  # a slot that stopped answering would leave its worker waiting: end the process
            log.exception("trainer slot %d failed outside a job", self.index)
            logging_flush()
            os._exit(1)

    def _serve_one(self, jobs: tuple[TrainingJob, ...]) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with job_context(jobs[0].claim.job_id, jobs[0].claim.attempt):
            device_lost = self._run(jobs)
            if device_lost:
                # Nothing more can run in this process: let the worker start a new one.
                log.error("the device is unusable after this job's error; the trainer process exits")
                logging_flush()
                os._exit(DEVICE_LOST_EXIT)
            memory = self._release_device_memory()
        self.sender.send(self.index, SlotIdle(memory, self.datasets.loads))

    def _send(self, member: int, message: Progress | Trained | Stopped | Failed) -> None:
        self.sender.send(self.index, ForMember(member, message))

    def _stop_requested(self, member: int) -> bool:
        return bool(self.stop[self.index * self.config.pack_max + member])

    def _run(self, jobs: tuple[TrainingJob, ...]) -> bool:
        """Runs the pack and sends each member's outcome as soon as it has one; True when the device is
        unusable since."""
        ended: set[int] = set()

        def end(member: int, outcome: Trained | Stopped | Failed) -> None:
            if self.stream is not None:
                self.stream.synchronize()  # its work on the device is done (and an asynchronous error shows) first
            ended.add(member)
            self._send(member, outcome)

        try:
            with self._on_own_stream():
                if len(jobs) == 1:
                    self._train(jobs[0], end)
                else:
                    self._train_pack(jobs, end)
        except TrainingStopped as stopped:
            end(0, Stopped(stopped.completed_epochs))
        except Exception as error:
            device_lost = not _device_usable(self.device)
            log.error(
                "job %s: %s",
                ", ".join(job.claim.job_id for job in jobs),
                describe(error),
                exc_info=not isinstance(error, ValueError | OSError),
            )
            failed = Failed(_portable(error), device_lost=device_lost)
            del error  # its traceback holds the run's tensors and graphs
            for member in range(len(jobs)):
                if member not in ended:
                    self._send(member, failed)
            return device_lost
        return False

    def _train(self, job: TrainingJob, end: Callable[[int, Trained | Stopped | Failed], None]) -> None:
        claim, config = job.claim, self.config
        dataset = self.datasets.get()
        trainer = Trainer(claim.spec, dataset, seed=claim.seed, cuda_graphs=config.cuda_graphs)
        saved = parse_resume_state(job.resume_state, claim) if job.resume_state is not None else None
        if saved is not None:
            trainer.restore(*saved)
            log.info("job %s: resuming after epoch %d", claim.job_id, trainer.epoch)
        record = {
            **provenance(device_label(self.device), dataset.file_sha256, trainer.use_graphs),
            "resumed_from_epoch": trainer.epoch,
            "train_samples": trainer.n_train,  # for samples/s (GET /metrics): an epoch's seconds are stored
        }
        self._send(0, AttemptBegun(list(trainer.history), record))
        fault = config.fault_injection

        def epoch_done(metrics: EpochMetrics) -> None:
            self._send(0, EpochFinished(metrics, resume_state_bytes(claim, *trainer.state())))
            if fault is not None and _fault_applies(fault, claim, metrics.epoch):
                fire(fault, self.device)

        result = trainer.run(on_epoch=epoch_done, should_stop=lambda: self._stop_requested(0))
        end(0, _trained(job, result.model, result.selected, dataset, trainer.val_index))

    def _train_pack(
        self, jobs: tuple[TrainingJob, ...], end: Callable[[int, Trained | Stopped | Failed], None]
    ) -> None:
        """Trains the jobs together (models/packed.py); each keeps its metrics, resume state and checkpoint,
        and ends (``end``) as it leaves the pack. Packs are made of jobs that start from scratch
        (service.jobs.queue.claim_jobs)."""
        claims = [job.claim for job in jobs]
        dataset = self.datasets.get()
        pack = PackedTrainer([claim.spec for claim in claims], [claim.seed for claim in claims], dataset)
        record = {
            **provenance(device_label(self.device), dataset.file_sha256, False),
            "resumed_from_epoch": 0,
            "train_samples": pack.n_train,
            "pack_size": len(jobs),
        }
        for member in range(len(jobs)):
            self._send(member, AttemptBegun([], record))
        fault = self.config.fault_injection

        def epoch_done(member: int, metrics: EpochMetrics) -> None:
            self._send(member, EpochFinished(metrics, resume_state_bytes(claims[member], *pack.member_state(member))))
            if fault is not None and _fault_applies(fault, claims[member], metrics.epoch):
                fire(fault, self.device)

        def member_ended(member: int, ended: MemberOutcome) -> None:
            job = jobs[member]
            if ended.result is not None:
                # The member's own module with its kept weights: its evaluation is its own, on its own split.
                result = ended.result
                end(member, _trained(job, result.model, result.selected, dataset, pack.val_index[member]))
            elif isinstance(ended.error, TrainingStopped):
                end(member, Stopped(ended.error.completed_epochs))
            else:
                assert ended.error is not None
                log.error("job %s: %s", job.claim.job_id, describe(ended.error))
                end(member, Failed(_portable(ended.error)))

        pack.run(on_epoch=epoch_done, should_stop=self._stop_requested, on_end=member_ended)

    def _release_device_memory(self) -> DeviceMemory | None:
        """Hands the ended job's cached blocks back to the driver: a cancelled, failed (out of memory included)
        or finished job leaves the GPU with only the data set on it, for the next job and other processes."""
        gc.collect()  # a reference cycle through a traceback or a closure would keep tensors alive
        if self.device.type != "cuda":
            return None
        # cuBLAS keeps a workspace per handle and stream in PyTorch's allocator (32 MiB or more each);
        # empty_cache() does not drop them.
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()
        return DeviceMemory(
            allocated=torch.cuda.memory_allocated(self.device),
            reserved=torch.cuda.memory_reserved(self.device),
            peak_allocated=torch.cuda.max_memory_allocated(self.device),
        )


def _trained(
    job: TrainingJob,
    model: torch.nn.Module,
    selected: EpochMetrics | None,
    dataset: DeviceDataset,
    val_index: torch.Tensor | None,
) -> Trained:
    """The kept weights as a checkpoint, and their evaluation on the data set already on the device."""
    claim = job.claim
    checkpoint = checkpoint_bytes(model, claim.spec, extra={"job_id": claim.job_id, "seed": str(claim.seed)})
    return Trained(selected, checkpoint, _evaluation(claim.job_id, model, dataset, val_index))


def _evaluation(
    job_id: str, model: torch.nn.Module, dataset: DeviceDataset, val_index: torch.Tensor | None
) -> dict[str, Any] | None:
    """The model's evaluation on the test split and the run's validation rows. Here, once, while the data set
    and the weights are on the device: a forward pass over 10,000 images. None when it fails: the model is
    registered all the same, and the API evaluates it on first request."""
    started = time.perf_counter()
    try:
        evaluation = evaluate_model(model, *evaluation_sets(dataset, val_index))
    except Exception:
        log.exception("job %s: the model could not be evaluated; the API will evaluate it on request", job_id)
        return None
    log.info("job %s: evaluated in %.3fs", job_id, time.perf_counter() - started)
    return evaluation


def trainer_main(conn: Connection, stop: Any, config: TrainerConfig) -> None:
    """The child's entry point: set up the device and data set, then hand each job to its slot's thread
    until the pipe closes. It never returns: it leaves with ``os._exit``, so that no CUDA clean-up runs."""
    # The worker decides when to stop: a terminal's Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config.logging is not None:
        configure_logging(*config.logging)
    configure_determinism()
    device = torch.device(config.device)
    if device.type == "cuda":
        if device.index is None:  # "cuda": the current device, named by its index for the calls that need one
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        if config.gpu_memory_fraction < 1.0:
            torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device)
    sender = _Sender(conn)
    datasets = DatasetCache(config, device)
    dataset_error = None
    try:
        datasets.get()
    except Exception as exc:  # the jobs will fail with this message; the process keeps serving
        dataset_error = describe(exc)
        log.error("data set not loaded: %s", dataset_error)
    slots = [_Slot(index, config, device, datasets, stop, sender) for index in range(config.slots)]
    for slot in slots[1:]:
        slot.start()
    # Slot 0 trains on this thread, the one that loaded the data set: with one slot, all of the process's
    # OpenMP work runs on one thread's team, as in a plain training script. (Measured on two CPU cores: the
    # default job trained on a thread of its own took 1.12x as long, submit to end, as in the worker before
    # the trainer process; on this thread, 0.98x.)
    threading.Thread(target=_route_jobs, args=(conn, slots), name="trainer-router", daemon=True).start()
    for slot in slots[1:]:
        slot.warmed_up.wait()
    ready = Ready(os.getpid(), device_label(device), dataset_error)
    slots[0].serve_after(lambda: sender.send(-1, ready))


def _route_jobs(conn: Connection, slots: list[_Slot]) -> None:
    """The child's router thread: hands each job to its slot until the worker closes the pipe, or dies; then
    ends the process (``os._exit``: no CUDA clean-up, which could abort)."""
    while True:
        try:
            index, job = conn.recv()
        except (EOFError, OSError):  # the worker died
            break
        if job is None:  # the worker's ``close``
            break
        slots[index].jobs.put(job)
    logging_flush()
    os._exit(0)


# -- the worker's side ------------------------------------------------------------------------------------
_DEATH = object()  # put in every slot's queue when the child's pipe closes


def _describe_exit(process: multiprocessing.process.BaseProcess) -> str:
    process.join(timeout=5)
    code = process.exitcode
    if code is None:
        return "the trainer process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the trainer process died ({name})"
    if code == DEVICE_LOST_EXIT:
        return "the trainer process lost its device (a CUDA error that poisons the process) and was replaced"
    return f"the trainer process exited with status {code}"


def _read(conn: Connection, ready: queue.SimpleQueue[object], slots: list[queue.SimpleQueue[object]]) -> None:
    """The worker's reader thread: routes the child's messages to its slots until the pipe closes."""
    while True:
        try:
            index, message = conn.recv()
        except (EOFError, OSError):
            break
        except Exception:  # a message that would not unpickle: the child is not to be trusted any more
            log.exception("unreadable message from the trainer process")
            break
        (ready if index < 0 else slots[index]).put(message)
    conn.close()  # here, not from another thread: closing a descriptor does not wake a thread blocked on it
    ready.put(_DEATH)
    for slot in slots:
        slot.put(_DEATH)


@dataclass
class _Child:
    """One trainer process, as the worker sees it."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    stop: Any
    slots: list[queue.SimpleQueue[object]]
    ready: Ready
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    dead: bool = False  # a slot saw its pipe close
    retired: bool = False  # it reported a lost device: start a new one


class TrainerProcess:
    """The worker's handle on its trainer process: started on first use, replaced when it dies.

    Thread-safe: each worker slot calls ``run`` for its own slot index.
    """

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.starts = 0  # processes started so far (the first, and each replacement)
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("forkserver")
        # Every child starts from the fork server's state: its imports done, its set-up run.
        self._context.set_forkserver_preload(FORK_SERVER_PRELOAD)

    @property
    def device_label(self) -> str:
        return self.ensure_running().ready.device_label

    @property
    def pid(self) -> int | None:
        return self._child.ready.pid if self._child is not None else None

    def ensure_running(self) -> _Child:
        """The live child, started (or replaced) first when needed; TrainerUnavailable when that fails."""
        with self._lock:
            child = self._child
            if child is not None and not child.dead and not child.retired and child.process.is_alive():
                return child
            if child is not None:
                self._dispose(child)
                log.warning("starting a new trainer process")
            self._child = child = self._start()
            return child

    def _start(self) -> _Child:
        ours, theirs = self._context.Pipe(duplex=True)
        stop = self._context.RawArray(ctypes.c_bool, self.config.slots * self.config.pack_max)
        process = self._context.Process(
            target=trainer_main, args=(theirs, stop, self.config), name="fmnist-trainer", daemon=True
        )
        process.start()
        theirs.close()  # ours is now the only other end: it reads EOF once the child is gone
        self.starts += 1
        ready_queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        slots: list[queue.SimpleQueue[object]] = [queue.SimpleQueue() for _ in range(self.config.slots)]
        # The reader holds no reference to self: a dropped TrainerProcess closes its pipe, and the child exits.
        threading.Thread(target=_read, args=(ours, ready_queue, slots), name="trainer-reader", daemon=True).start()
        try:
            ready = ready_queue.get(timeout=START_TIMEOUT_SECONDS)
        except queue.Empty:
            ready = None
        if not isinstance(ready, Ready):
            process.kill()
            raise TrainerUnavailable(f"{_describe_exit(process)} while starting")
        log.info("trainer process %d on %s", ready.pid, ready.device_label)
        child = _Child(process, ours, stop, slots, ready)
        # A TrainerProcess dropped without ``close`` (a test's worker, say) still stops its child.
        weakref.finalize(self, self._dispose, child)
        return child

    def run(
        self,
        slot: int,
        jobs: list[TrainingJob],
        on_progress: Callable[[int, Progress], None],
        should_stop: Callable[[int], bool],
        on_outcome: Callable[[int, Outcome], None] | None = None,
    ) -> tuple[list[Outcome], SlotIdle | None]:
        """Runs ``jobs`` (one, or a pack of at most ``pack_max`` trained together) on ``slot`` of the child:
        ``on_progress(member, message)`` gets each message as it comes (in this thread); ``should_stop(member)``
        is asked every ``STOP_POLL_SECONDS`` and on each message, and once it is true the child stops that
        member at its next step; ``on_outcome(member, outcome)`` as each member ends (a member the child's
        death ends, at the end). Returns each member's outcome and, unless the child died, the slot's state
        after clean-up."""
        if not 1 <= len(jobs) <= self.config.pack_max:
            raise ValueError(f"a pack holds 1 to {self.config.pack_max} jobs, not {len(jobs)}")
        child = self.ensure_running()
        flags = range(slot * self.config.pack_max, slot * self.config.pack_max + len(jobs))
        for flag in flags:
            child.stop[flag] = False
        with child.send_lock:
            child.conn.send((slot, tuple(jobs)))
        inbox = child.slots[slot]
        outcomes: list[Outcome | None] = [None] * len(jobs)
        while True:
            for member, flag in enumerate(flags):
                if outcomes[member] is None and not child.stop[flag] and should_stop(member):
                    child.stop[flag] = True
            try:
                message = inbox.get(timeout=STOP_POLL_SECONDS)
            except queue.Empty:
                continue
            if message is _DEATH:
                child.dead = True
                description = _describe_exit(child.process)
                if all(outcome is not None for outcome in outcomes):
                    log.warning("%s after job %s ended", description, jobs[0].claim.job_id)
                for member, outcome in enumerate(outcomes):
                    if outcome is None:
                        outcomes[member] = died = Died(description)
                        if on_outcome is not None:
                            on_outcome(member, died)
                return [outcome for outcome in outcomes if outcome is not None], None
            if isinstance(message, SlotIdle):
                assert all(outcome is not None for outcome in outcomes), "a slot went idle before its jobs ended"
                return [outcome for outcome in outcomes if outcome is not None], message
            assert isinstance(message, ForMember)
            member, payload = message.member, message.message
            if isinstance(payload, Trained | Stopped | Failed):
                outcomes[member] = payload
                if isinstance(payload, Failed) and payload.device_lost:
                    child.retired = True
                if on_outcome is not None:
                    on_outcome(member, payload)
            elif outcomes[member] is None:
                on_progress(member, payload)

    def close(self, timeout: float = 30.0) -> None:
        """Stops the child (call it once the slots are idle); kills it past ``timeout`` seconds."""
        with self._lock:
            if self._child is not None:
                self._dispose(self._child, timeout)
                self._child = None

    @staticmethod
    def _dispose(child: _Child, timeout: float = 10.0) -> None:
        with contextlib.suppress(OSError, ValueError), child.send_lock:  # the pipe may be closed already
            child.conn.send((-1, None))
        child.process.join(timeout)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(5)
