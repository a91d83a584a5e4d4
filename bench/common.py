"""Shared pieces of the benchmarks: running variants in fresh processes, a live service, tables."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# The installed console script; `python -m service.cli` where the project is on the path but not installed.
_SCRIPT = Path(sys.executable).with_name("fmnist")
FMNIST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "service.cli"]


def data_dir() -> Path:
    candidates = [os.environ.get("FMNIST_DATA_DIR"), str(ROOT.parent / "shared" / "data" / "fashion-mnist")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    sys.exit("set FMNIST_DATA_DIR to the folder with the Fashion-MNIST IDX files")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(module: str, args: list[str]) -> dict[str, Any]:
    """Runs ``python -m module args`` in a fresh process; its last stdout line is a JSON result."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{module} {args} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A real API process and worker process on a throwaway FMNIST_HOME."""

    def __init__(self, home: Path, device: str, concurrency: int = 1, extra_env: dict[str, str] | None = None):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FMNIST_HOME": str(home),
            "FMNIST_DATA_DIR": str(data_dir()),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.device, self.concurrency = device, concurrency
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        subprocess.run([*FMNIST, "db", "upgrade"], env=self.env, check=True, capture_output=True)
        log = (self.home / "api.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [*FMNIST, "serve", "--port", str(self.port), "--log-level", "warning"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        self.worker_log = self.home / "worker.log"
        with self.worker_log.open("wb") as worker_log:
            self.processes.append(
                subprocess.Popen(
                    [*FMNIST, "worker", "--device", self.device, "--concurrency", str(self.concurrency)],
                    env=self.env,
                    stdout=worker_log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 180
        while "data set loaded" not in self.worker_log.read_text(errors="replace"):
            if time.monotonic() > deadline or self.processes[1].poll() is not None:
                raise RuntimeError(f"worker did not start:\n{self.worker_log.read_text()}")
            time.sleep(0.05)
        with httpx.Client(base_url=self.url) as client:
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("API did not start")
                time.sleep(0.05)

    @property
    def worker_pid(self) -> int:
        return self.processes[1].pid

    def worker_peak_rss_mib(self) -> float:
        """The largest peak resident size in the worker's process tree: its trainer process, which holds the
        data set and trains (the worker, its fork server and its trainer are separate processes)."""
        return max(_peak_rss_mib(pid) for pid in _process_tree(self.worker_pid))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    import psutil  # here: the GPU machine's benchmarks run without it, and never ask for a process tree

    return [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]


@contextmanager
def service(device: str, concurrency: int = 1, extra_env: dict[str, str] | None = None) -> Iterator[Service]:
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as home:
        running = Service(Path(home), device, concurrency, extra_env)
        try:
            running.start()
            yield running
        finally:
            running.stop()


def wait_for(
    running: Service, client: httpx.Client, job_id: str, poll: float = 0.005, timeout: float = 3600
) -> dict[str, Any]:
    """Waits for the job to end, then returns it as the API shows it.

    The waiting reads the SQLite file directly (read-only, a few microseconds a look): polling the API
    every few milliseconds would spend the CPU that the worker is being timed on.
    """
    database = running.home / "fmnist.db"
    deadline = time.monotonic() + timeout
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row and row[0] in ("succeeded", "failed", "cancelled", "pruned"):
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                return job
            time.sleep(poll)
    raise TimeoutError(job_id)


def client_for(running: Service) -> httpx.Client:
    return httpx.Client(base_url=running.url, timeout=60)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
