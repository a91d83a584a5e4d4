"""On a CUDA device: a cancelled job gives its memory back, and one that runs out of memory fails alone.

The memory is the worker's trainer process's (service/worker/trainer.py): read from what it reports after
each job, and device-wide from the driver.

Skipped without a GPU; run on the GPU machine (see bench/README.md, "On a lent GPU").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from service.jobs import queue
from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.specs import spec_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.db,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MiB = 2**20
# About 37M parameters: its weights, gradients, optimiser state and activations are hundreds of MiB.
BIG = spec_of(hidden_layers=[4096, 4096, 4096], batch_size=600, epochs=400, optimizer="adam", lr=1e-4, seed=1)
SMALL = spec_of(hidden_layers=[32], batch_size=64, epochs=2, seed=1)


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def device_free() -> int:
    """Free memory on the device as the driver sees it: every process's, the trainer process's included."""
    free, _total = torch.cuda.mem_get_info()
    return free


@pytest.fixture
def worker(settings: Settings, db: Database) -> Iterator[Worker]:
    device_free()  # this test process's own CUDA context, before any baseline is read
    gpu_worker = Worker(settings, db, torch.device("cuda", torch.cuda.current_device()), burst=True)
    gpu_worker.trainer.ensure_running()  # the data set on the device before the baseline is read
    yield gpu_worker
    gpu_worker.close()


def run_and_cancel(worker: Worker, db: Database) -> int:
    """Runs BIG on the worker, cancels it after two epochs; the device memory it held while it ran."""
    free = device_free()
    job = queue.enqueue_job(db, BIG, max_attempts=1)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        wait_until(lambda: get_job(db, job.id).epochs_done >= 2)
        in_use = free - device_free()
        queue.request_cancel(db, job.id)
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert get_job(db, job.id).status is JobStatus.cancelled
    return in_use


def test_cancelling_a_running_job_frees_its_gpu_memory(worker: Worker, db: Database) -> None:
    # The first job also loads the trainer's kernels and cuBLAS handles, which stay: measure from after it.
    run_and_cancel(worker, db)
    assert worker.last_idle is not None and worker.last_idle.memory is not None
    baseline = worker.last_idle.memory
    free_before = device_free()
    in_use = run_and_cancel(worker, db)
    assert in_use > 100 * MiB, f"the job held only {in_use / MiB:.0f} MiB: not a test of freeing"
    # All of it back: in the trainer's PyTorch accounting, in its cache, and as the driver sees it.
    memory = worker.last_idle.memory
    assert memory is not None and memory.peak_allocated - baseline.allocated > 100 * MiB
    left = memory.allocated - baseline.allocated
    assert left < MiB, f"{left / MiB:.1f} MiB of {in_use / MiB:.0f} still allocated"
    assert memory.reserved - baseline.reserved < 4 * MiB
    held = (free_before - device_free()) / MiB
    assert held < 8, f"{held:.0f} MiB still held after a job that held {in_use / MiB:.0f} MiB"
    assert worker.trainer.starts == 1


def test_out_of_memory_fails_that_job_and_the_worker_runs_the_next(settings: Settings, db: Database) -> None:
    _free, total = torch.cuda.mem_get_info()
    # Room for the (synthetic) data set and a small model with its CUDA graphs and cuBLAS workspace; not for
    # BIG, whose weights, gradients and Adam state alone are about 600 MiB.
    capped = settings.model_copy(update={"gpu_memory_fraction": 400 * MiB / total})
    worker = Worker(capped, db, torch.device("cuda", torch.cuda.current_device()), burst=True)
    too_big = queue.enqueue_job(db, BIG, max_attempts=3)
    small = queue.enqueue_job(db, SMALL, max_attempts=3)
    assert worker.run() == 0
    failed = get_job(db, too_big.id)
    assert failed.status is JobStatus.failed and failed.attempt == 1, ("out of memory is not retried", failed.error)
    assert "out of memory" in (failed.error or "").lower(), failed.error
    done = get_job(db, small.id)
    assert done.status is JobStatus.succeeded and done.attempt == 1, done.error
