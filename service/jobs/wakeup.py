"""Waking idle workers when a job is queued, without polling the database in a tight loop.

The API appends a byte to a signal file under FMNIST_HOME after every submission; an idle worker watches
the file's size and modification time with a stat() every few milliseconds (a cheap system call, no
database query) and claims at once when they change. Workers still look at the queue every
FMNIST_POLL_SECONDS, which covers jobs submitted where the signal file cannot be seen (another machine).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

WATCH_INTERVAL = 0.005
# The file is emptied past this size; the truncation is itself a change the watchers see.
MAX_SIGNAL_BYTES = 1 << 20

Stamp = tuple[int, int]


class QueueSignal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def notify(self) -> None:
        """Tells idle workers that there is work."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size >= MAX_SIGNAL_BYTES:
                os.ftruncate(fd, 0)
            os.write(fd, b".")
        finally:
            os.close(fd)

    def stamp(self) -> Stamp:
        """Take this before looking at the queue, then ``wait`` for a change since it."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def wait(self, since: Stamp, timeout: float, stop: threading.Event) -> bool:
        """Waits up to ``timeout`` for a notification after ``since`` (or ``stop``); True when one came."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stamp() != since:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.wait(min(WATCH_INTERVAL, remaining)):
                return False
