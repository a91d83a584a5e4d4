"""Real ``fmnist`` processes (workers, API servers) on one FMNIST_HOME and database, for fault tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import make_url, select
from sqlalchemy.exc import OperationalError

from service.settings import Settings
from service.store.db import Database
from service.store.tables import Job

_SCRIPT = Path(sys.executable).with_name("fmnist")
FMNIST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "service.cli"]

DEADLINE = 120.0

T = TypeVar("T")


class Fleet:
    """``fmnist`` processes on one FMNIST_HOME and database, each logging to its own file."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings, self.log_dir = settings, log_dir
        self.env = {
            **os.environ,
            "FMNIST_HOME": str(settings.home),
            "FMNIST_DATA_DIR": str(settings.data_dir),
            "FMNIST_POLL_SECONDS": "0.1",
            # One thread each: several processes share two cores, and tiny steps split across oversubscribed
            # OpenMP threads run up to 30x slower (an epoch of 0.5 s took 15 s).
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        if settings.database_url is None:
            self.env.pop("FMNIST_DATABASE_URL", None)
        else:
            self.env["FMNIST_DATABASE_URL"] = settings.database_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.meant_to_run: set[str] = set()

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen([*FMNIST, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        self.meant_to_run.add(name)
        return process

    def start_worker(self) -> str:
        name = f"worker-{sum(n.startswith('worker-') for n in self.processes)}"
        self.start(name, "worker", "--device", "cpu")
        return name

    def worker_named(self, worker_id: str | None) -> str:
        """The name of the process a job's ``worker_id`` (host:pid:slot) points at."""
        assert worker_id is not None
        pid = int(worker_id.split(":")[-2])
        return next(name for name, process in self.processes.items() if process.pid == pid)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.processes)

    def check_running(self) -> None:
        for name in self.meant_to_run:
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited with {self.processes[name].returncode}:\n{self.log(name)}")

    def kill(self, name: str, *, wait: bool = True) -> None:
        self.meant_to_run.discard(name)
        self.processes[name].kill()
        if wait:
            self.processes[name].wait(timeout=30)

    def stop(self, *names: str, sig: int = signal.SIGTERM, timeout: float = 30) -> list[int]:
        """Signals them all (SIGTERM: how an orchestrator stops a worker), then waits; their exit codes."""
        for name in names:
            self.meant_to_run.discard(name)
            if self.processes[name].poll() is None:
                self.processes[name].send_signal(sig)
        try:
            return [self.processes[name].wait(timeout=timeout) for name in names]
        except subprocess.TimeoutExpired as expired:  # what the stuck process last wrote says where it hangs
            raise AssertionError(f"{expired}; their logs:\n{self.logs()}") from expired

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()  # SIGKILL ends a SIGSTOPped process too
            process.wait()


def wait_for(what: str, probe: Callable[[], T | None], fleet: Fleet, timeout: float = DEADLINE) -> T:
    """Polls ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None and value is not False:
            return value
        fleet.check_running()
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{fleet.logs()}")


def job_row_writable(db: Database, job_id: str) -> bool:
    """Whether a write to the job could go ahead now, or a transaction holds the lock it needs (on SQLite: any
    write transaction, which holds the database's one write lock)."""
    if db.is_sqlite:
        path = make_url(db.url).database
        assert path is not None
        probe = sqlite3.connect(path, timeout=1.0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            probe.close()
    try:
        with db.engine.connect() as connection, connection.begin():
            connection.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
            connection.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        return True
    except OperationalError:
        return False


def freeze(process: subprocess.Popen[bytes], db: Database, job_id: str) -> None:
    """SIGSTOPs the process outside any write transaction that touches the job (on SQLite: any write
    transaction): frozen inside one, it would hold the database's lock and stall every other process (an
    API's submission then waits out its busy timeout and answers 503), a different fault from the one under
    test."""
    for _ in range(50):
        process.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{process.pid}/stat")
        while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            time.sleep(0.005)
        if job_row_writable(db, job_id):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker was inside a write transaction every time it was stopped")
