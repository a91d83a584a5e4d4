"""Helpers for tests that start real server processes."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(client: httpx.Client, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Waits for /readyz to answer 200; fails early when the server process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"the server was not ready in {timeout}s")
