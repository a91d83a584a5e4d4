"""Logs: JSON lines from real `fmnist serve` and `fmnist worker` processes, carrying request and job ids."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.jobs import queue
from service.logs import job_context, log_handler, request_id_var
from service.settings import Settings
from service.store.db import Database
from tests.support.servers import free_port, wait_ready
from tests.support.specs import spec_of

FMNIST = [sys.executable, "-m", "service.cli"]
TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 2}


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(settings.data_dir)}
    env.pop("FMNIST_LOG_FORMAT", None)
    env.update(extra)
    if settings.database_url:
        env["FMNIST_DATABASE_URL"] = settings.database_url
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON: a line that is not JSON fails the test."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n---\n{text}")
    return records


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("3f2a9c1e-7b4d-4e0a-9a51-2c8e4f6b0d17", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),  # a W3C traceparent
        ("req.42:a/b+c=", True),
        ("x" * 129, False),
        ("two words", False),
        ('{"forged": "json"}', False),
        ("", False),
    ],
)
def test_a_sane_request_id_is_echoed_and_anything_else_replaced(settings: Settings, sent: str, kept: bool) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/healthz", headers={"X-Request-ID": sent})
    echoed = response.headers["x-request-id"]
    if kept:
        assert echoed == sent
    else:
        assert echoed != sent and re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_each_request_without_an_id_gets_its_own(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
        errored = client.get("/v1/no-such-route")
    assert len(ids) == 3
    assert errored.status_code == 404 and "x-request-id" in errored.headers


def test_an_unexpected_error_answers_and_logs_with_the_request_id(settings: Settings) -> None:
    app = create_app(settings)

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    stream = io.StringIO()
    logger = logging.getLogger("service.api.errors")
    logger.addHandler(handler := log_handler("json", stream))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/broken", headers={"X-Request-ID": "req-500"})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    assert response.headers.get_list("x-request-id") == ["req-500"]  # once, though two layers could add it
    (logged,) = json_lines(stream.getvalue())
    assert (logged["message"], logged["request_id"]) == ("unhandled error", "req-500")
    assert "RuntimeError: a bug" in logged["exc_info"]


def test_text_lines_name_the_request_and_the_job() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.text_format")
    logger.addHandler(log_handler("text", stream))
    logger.propagate = False
    try:
        token = request_id_var.set("req-1")
        logger.warning("inside a request")
        request_id_var.reset(token)
        with job_context("job-7", 2):
            logger.warning("inside a job")
        logger.warning("outside")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    first, second, third = stream.getvalue().splitlines()
    assert first.endswith(" request_id=req-1 inside a request")
    assert second.endswith(" job_id=job-7 attempt=2 inside a job")
    assert third.endswith("] outside")


@pytest.mark.timeout(90)
def test_the_server_logs_json_with_the_request_id(settings: Settings, db: Database, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*FMNIST, "serve", "--port", str(port), "--log-format", "json"],
            env=environment(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, process)
            found = client.get("/v1/jobs/no-such-job", headers={"X-Request-ID": "test-request-42"})
            assert found.status_code == 404 and found.headers["x-request-id"] == "test-request-42"
            generated = client.get("/healthz", headers={"X-Request-ID": "not sane"}).headers["x-request-id"]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    records = json_lines(log_path.read_text())
    (access,) = [r for r in records if r.get("request_id") == "test-request-42"]
    assert access["logger"] == "uvicorn.access" and access["level"] == "INFO"
    assert (access["method"], access["path"], access["status_code"]) == ("GET", "/v1/jobs/no-such-job", 404)
    assert "time" in access and "color_message" not in access
    (healthz,) = [r for r in records if r.get("request_id") == generated]
    assert healthz["path"] == "/healthz"
    # Start-up and shut-down lines are JSON too, with no request id.
    started = [r for r in records if "Application startup complete" in r["message"]]
    assert started and "request_id" not in started[0]


@pytest.mark.timeout(120)
def test_a_burst_workers_lines_during_a_job_carry_its_id(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, spec_of(**TINY), max_attempts=3)
    # The format from the environment this time (FMNIST_LOG_FORMAT, through Settings), not the flag.
    finished = subprocess.run(
        [*FMNIST, "worker", "--burst", "--device", "cpu"],
        env=environment(settings, FMNIST_LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert finished.returncode == 0, finished.stderr
    records = json_lines(finished.stderr)
    about_the_job = [r for r in records if job.id in r["message"]]
    assert len(about_the_job) >= 2, records  # its attempt starting and its model registered
    assert any("succeeded" in r["message"] for r in about_the_job)
    for record in about_the_job:
        assert (record.get("job_id"), record.get("attempt")) == (job.id, 1), record
    # Before and after the job: no job id.
    (exiting,) = [r for r in records if "burst mode: exiting" in r["message"]]
    assert "job_id" not in exiting
