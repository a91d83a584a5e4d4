"""Helpers for tests of the API: its OpenAPI document, and real server processes."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from service.api.app import create_app
from service.settings import Settings


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document. It depends on the routes only: read from an app on an in-memory database
    that never serves a request, so that collecting a test module touches no files."""
    app = create_app(Settings(home=Path("unused"), database_url="sqlite://"))
    try:
        return app.openapi()
    finally:
        app.state.predictor.close()
        app.state.db.dispose()


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
