"""service/jobs/wakeup.py: submissions wake idle workers without a database poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from service.jobs import queue
from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.jobs.wakeup import MAX_SIGNAL_BYTES, QueueSignal
from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.specs import spec_of


def test_wait_returns_at_a_notification_and_not_before(tmp_path: Path) -> None:
    signal = QueueSignal(tmp_path / "queue.signal")
    stop = threading.Event()
    assert signal.wait(signal.stamp(), timeout=0.05, stop=stop) is False
    seen = signal.stamp()
    threading.Timer(0.05, signal.notify).start()
    assert signal.wait(seen, timeout=10, stop=stop) is True


def test_a_notification_between_stamp_and_wait_is_not_lost(tmp_path: Path) -> None:
    signal = QueueSignal(tmp_path / "queue.signal")
    signal.notify()
    seen = signal.stamp()
    signal.notify()  # twice in the same clock tick still changes the stamp (the file grows)
    assert signal.wait(seen, timeout=0, stop=threading.Event()) is True


def test_stop_ends_the_wait(tmp_path: Path) -> None:
    signal = QueueSignal(tmp_path / "queue.signal")
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert signal.wait(signal.stamp(), timeout=30, stop=stop) is False
    assert time.monotonic() - started < 10


def test_the_file_is_emptied_when_it_grows_large(tmp_path: Path) -> None:
    path = tmp_path / "queue.signal"
    path.write_bytes(b"." * MAX_SIGNAL_BYTES)
    signal = QueueSignal(path)
    seen = signal.stamp()
    signal.notify()
    assert path.stat().st_size == 1 and signal.stamp() != seen


def test_an_idle_worker_starts_a_submitted_job_long_before_its_next_poll(settings: Settings, db: Database) -> None:
    slow_poll = settings.model_copy(update={"poll_seconds": 30.0})
    worker = Worker(slow_poll, db, torch.device("cpu"))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.2)  # let it find the queue empty and go idle
        job = queue.enqueue_job(db, spec_of(hidden_layers=[], epochs=1, batch_size=600), max_attempts=3)
        QueueSignal(slow_poll.queue_signal_path).notify()
        deadline = time.monotonic() + 10
        while get_job(db, job.id).status is JobStatus.queued:
            assert time.monotonic() < deadline, "the worker slept through the notification"
            time.sleep(0.01)
    finally:
        worker.shutdown.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
