"""On a CUDA device: a cancelled job gives its memory back, and one that runs out of memory fails alone.

Skipped without a GPU; run on the GPU machine (see bench/README.md, "On a lent GPU").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from service import queue
from service.db import Database
from service.jobs import get_job
from service.settings import Settings
from service.tables import JobStatus
from service.worker import Worker
from tests.specs import spec_of

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


@pytest.fixture
def worker(settings: Settings, db: Database) -> Iterator[Worker]:
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.empty_cache()
    gpu_worker = Worker(settings, db, device, burst=True)
    gpu_worker.dataset()  # on the device before the baseline is read
    torch.cuda.synchronize()
    yield gpu_worker
    torch.cuda.set_per_process_memory_fraction(1.0, device)


def run_and_cancel(worker: Worker, db: Database) -> int:
    """Runs BIG on the worker, cancels it after two epochs; the bytes it held while it ran."""
    allocated = torch.cuda.memory_allocated()
    job = queue.enqueue_job(db, BIG, max_attempts=1)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        wait_until(lambda: get_job(db, job.id).epochs_done >= 2)
        in_use = torch.cuda.memory_allocated() - allocated
        queue.request_cancel(db, job.id)
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert get_job(db, job.id).status is JobStatus.cancelled
    return in_use


def test_cancelling_a_running_job_frees_its_gpu_memory(worker: Worker, db: Database) -> None:
    # The first job also loads the process's kernels and cuBLAS handles, which stay: measure from after it.
    run_and_cancel(worker, db)
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    free_before, _total = torch.cuda.mem_get_info()
    in_use = run_and_cancel(worker, db)
    assert in_use > 100 * MiB, f"the job held only {in_use / MiB:.0f} MiB: not a test of freeing"
    # All of it back: in PyTorch's accounting, in its cache, and as the driver sees it.
    left = torch.cuda.memory_allocated() - allocated
    assert left < MiB, f"{left / MiB:.1f} MiB of {in_use / MiB:.0f} still allocated\n{torch.cuda.memory_summary()}"
    assert torch.cuda.memory_reserved() - reserved < 4 * MiB
    free_after, _total = torch.cuda.mem_get_info()
    held = (free_before - free_after) / MiB
    assert held < 8, f"{held:.0f} MiB still held after a job that held {in_use / MiB:.0f} MiB"


def test_out_of_memory_fails_that_job_and_the_worker_runs_the_next(worker: Worker, db: Database) -> None:
    _free, total = torch.cuda.mem_get_info()
    # Room for the data set and a small model (its CUDA graphs and cuBLAS workspace), not for BIG with Adam.
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 400 * MiB) / total)
    too_big = queue.enqueue_job(db, BIG, max_attempts=3)
    small = queue.enqueue_job(db, SMALL, max_attempts=3)
    assert worker.run_once() and worker.run_once()
    failed = get_job(db, too_big.id)
    assert failed.status is JobStatus.failed and failed.attempt == 1, "out of memory is not retried"
    assert "out of memory" in (failed.error or "").lower(), failed.error
    assert get_job(db, small.id).status is JobStatus.succeeded
