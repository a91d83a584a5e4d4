"""`fmnist serve --workers N`: N processes on one port, each answering predictions with its own model cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.store.db import Database
from tests.support.servers import free_port, wait_ready
from tests.test_registry import png, train

pytestmark = [pytest.mark.e2e, pytest.mark.db, pytest.mark.timeout(120)]


def access_log_processes(log: Path) -> set[int]:
    """The processes whose access log lines show an answered prediction (the log is JSON lines)."""
    processes = set()
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("logger") == "uvicorn.access" and record.get("path", "").startswith("/v1/predict"):
            processes.add(int(record["process"]))
    return processes


def test_two_worker_processes_share_the_port_and_both_answer_predictions(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    with TestClient(create_app(settings)) as setup:
        model_id = train(setup, settings, db, seed=1)
    port = free_port()
    env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(settings.data_dir)}
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"]
    with log.open("wb") as output:  # --log-format json: a CLI flag that each spawned process must honour
        server = subprocess.Popen([*command, "--log-format", "json"], env=env, stdout=output, stderr=output)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, server)
        for _ in range(200):  # a new connection each time: the kernel hands it to either process
            answer = httpx.post(
                f"http://127.0.0.1:{port}/v1/predict", files={"file": ("x.png", png(), "image/png")}, timeout=30
            )
            assert answer.status_code == 200 and answer.json()["model_id"] == model_id
            if len(access_log_processes(log)) == 2:
                break
        answered_by = access_log_processes(log)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert len(answered_by) == 2 and server.pid not in answered_by
