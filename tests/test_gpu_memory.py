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
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    gpu_worker = Worker(settings, db, device, burst=True)
    gpu_worker.dataset()  # on the device before the baseline is read
    torch.cuda.synchronize()
    yield gpu_worker
    torch.cuda.set_per_process_memory_fraction(1.0, device)


def test_cancelling_a_running_job_frees_its_gpu_memory(worker: Worker, db: Database) -> None:
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    free_before, _total = torch.cuda.mem_get_info()
    job = queue.enqueue_job(db, BIG, max_attempts=1)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        wait_until(lambda: get_job(db, job.id).epochs_done >= 2)
        in_use = torch.cuda.memory_allocated() - allocated
        assert in_use > 100 * MiB, f"the job holds only {in_use / MiB:.0f} MiB: not a test of freeing"
        queue.request_cancel(db, job.id)
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert get_job(db, job.id).status is JobStatus.cancelled
    # Back to the data set alone: in PyTorch's accounting, in its cache, and as the driver sees it.
    assert torch.cuda.memory_allocated() - allocated < MiB
    assert torch.cuda.memory_reserved() - reserved < 4 * MiB
    free_after, _total = torch.cuda.mem_get_info()
    assert free_before - free_after < 32 * MiB, f"{(free_before - free_after) / MiB:.0f} MiB still held"


def test_out_of_memory_fails_that_job_and_the_worker_runs_the_next(worker: Worker, db: Database) -> None:
    _free, total = torch.cuda.mem_get_info()
    # Room for the data set and a small model, not for BIG's weights.
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 64 * MiB) / total)
    too_big = queue.enqueue_job(db, BIG, max_attempts=3)
    small = queue.enqueue_job(db, SMALL, max_attempts=3)
    assert worker.run_once() and worker.run_once()
    failed = get_job(db, too_big.id)
    assert failed.status is JobStatus.failed and failed.attempt == 1, "out of memory is not retried"
    assert "out of memory" in (failed.error or "").lower(), failed.error
    assert get_job(db, small.id).status is JobStatus.succeeded
