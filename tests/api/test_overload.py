"""Overload: a full prediction queue answers 503 at once (FMNIST_PREDICT_MAX_QUEUE), and a real `fmnist serve`
under a burst of concurrent requests answers every one of them quickly: 200, 503 or 429, each with its headers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.jobs import queue
from service.settings import Settings
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.servers import free_port, wait_ready
from tests.support.specs import spec_of

_SCRIPT = Path(sys.executable).with_name("fmnist")
FMNIST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "service.cli"]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def files(count: int) -> dict[str, Any]:
    return {"files": [("files", (f"{index}.png", png(), "image/png")) for index in range(count)]}


BOUNDARY = "fmnistoverloadtest"
MULTIPART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="0.png"\r\n'
    "Content-Type: image/png\r\n\r\n".encode()
    + png()
    + f"\r\n--{BOUNDARY}--\r\n".encode()
)


def train_a_model(settings: Settings, db: Database) -> None:
    queue.enqueue_job(db, spec_of(hidden_layers=[8], epochs=1, batch_size=64), max_attempts=1)
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    raise AssertionError(f"no {name} {labels}")


@pytest.fixture
def bounded_app(settings: Settings, db: Database) -> Iterator[FastAPI]:
    """The API with one trained model, loaded, and a queue bound of 2 images."""
    train_a_model(settings, db)
    app = create_app(settings.model_copy(update={"predict_max_queue": 2}))
    with TestClient(app) as client:
        assert client.post("/v1/predict", **files(1)).status_code == 200  # the model is now in the cache
        yield app


async def answer_without_a_body(app: FastAPI) -> int:
    """The status ``app`` answers to a multipart prediction whose body never comes (``receive`` blocks)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return int(sent[0]["status"])


def test_a_full_queue_answers_503_at_once_with_retry_after(bounded_app: FastAPI) -> None:
    batcher = bounded_app.state.predictor.batcher
    entered, release = threading.Event(), threading.Event()
    process, loop_max = batcher.process, batcher.loop_max

    def held(items: list[Any]) -> Any:  # the real batch, once the test lets the batching thread go on
        entered.set()
        release.wait(timeout=10)
        return process(items)

    async def main() -> tuple[list[httpx.Response], httpx.Response, float]:
        transport = httpx.ASGITransport(app=bounded_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            batcher.process = held
            batcher.loop_max = 0  # the held batch must hold the batching thread, not the event loop
            running = asyncio.ensure_future(client.post("/v1/predict", **files(1)))
            while not entered.is_set():
                await asyncio.sleep(0.005)
            waiting = asyncio.ensure_future(client.post("/v1/predict", **files(2)))  # fills the queue: 2 images
            while batcher.waiting < 2:
                await asyncio.sleep(0.005)
            started = time.monotonic()
            shed = await client.post("/v1/predict", **files(1))
            took = time.monotonic() - started
            assert await answer_without_a_body(bounded_app) == 503  # refused before the body is read
            release.set()
            return [await running, await waiting], shed, took

    try:
        served, shed, took = asyncio.run(main())
    finally:
        release.set()
        batcher.process = process
        batcher.loop_max = loop_max
    assert [response.status_code for response in served] == [200, 200]
    assert took < 1.0  # at once: not after the held batch
    assert shed.status_code == 503, shed.text
    assert shed.headers["Retry-After"] == "1"
    body = shed.json()
    assert body["code"] == "predict_queue_full"
    assert "2 images are already waiting" in body["detail"] and "FMNIST_PREDICT_MAX_QUEUE" in body["detail"]
    assert "retry" in body["detail"]
    with TestClient(bounded_app) as client:
        text = client.get("/metrics").text
        assert metric(text, "fmnist_predict_shed_total") == 2
        assert metric(text, "fmnist_predict_queue_images") == 0
        assert metric(text, "fmnist_predict_latency_seconds_count", endpoint="predict", status="503") == 2
        # Drained: served again.
        assert client.post("/v1/predict", **files(2)).status_code == 200


# -- a burst against a real server --------------------------------------------------------------------------------

BURST = 1024
CONCURRENCY = 256
PREDICT_LIMIT = 600  # per minute, for the one loopback address: the burst passes it


@contextlib.contextmanager
def serving(settings: Settings, log: Path, **env: str) -> Iterator[str]:
    """`fmnist serve` on a free loopback port with ``env`` (FMNIST_ variables) on top of the test's; yields its URL.
    Its output goes to ``log``, which must hold no traceback when it has stopped."""
    port = free_port()
    environment = {**os.environ, "FMNIST_HOME": str(settings.home), **env}
    environment.pop("FMNIST_API_KEYS", None)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*FMNIST, "serve", "--port", str(port), "--log-level", "warning"],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_ready(client, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.fixture
def busy_server(settings: Settings, db: Database, tmp_path: Path) -> Iterator[str]:
    """`fmnist serve` on loopback with one model, a queue bound of 8 images and a predict rate limit."""
    train_a_model(settings, db)
    limits = {"FMNIST_PREDICT_MAX_QUEUE": "8", "FMNIST_RATE_LIMIT_PREDICT": f"{PREDICT_LIMIT}/minute"}
    with serving(settings, tmp_path / "api.log", **limits) as url:
        yield url


class HealthProbe(threading.Thread):
    """Times GET /healthz every 50 ms on a connection of its own, from a thread of its own (the burst's client
    keeps its event loop busy: a probe there would time that loop, not the server)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.times, self.done = url, list[float](), threading.Event()
        self.failures: list[str] = []  # asserted by the test's own thread, not raised in this one

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    status = client.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    return
                if status != 200:
                    self.failures.append(f"GET /healthz answered {status}")
                self.times.append(time.monotonic() - started)
                self.done.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.join(timeout=10)


async def burst(url: str) -> list[httpx.Response | httpx.HTTPError]:
    """BURST predictions, CONCURRENCY at a time: each one's answer, or the transport error it got instead."""
    # One upload, encoded once: the client's CPU goes to sending, on the two cores the server has too.
    body = {"content": MULTIPART, "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        slots = asyncio.Semaphore(CONCURRENCY)

        async def predict() -> httpx.Response | httpx.HTTPError:
            async with slots:
                try:
                    return await client.post("/v1/predict", **body)
                except httpx.HTTPError as exc:
                    return exc

        return await asyncio.gather(*(predict() for _ in range(BURST)))


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_burst_gets_quick_answers_200_503_or_429_and_health_stays_prompt(busy_server: str, tmp_path: Path) -> None:
    with HealthProbe(busy_server) as probe:  # stopped however the burst ends
        started = time.monotonic()
        outcomes = asyncio.run(burst(busy_server))
        took = time.monotonic() - started
    errors = Counter(repr(outcome) for outcome in outcomes if isinstance(outcome, httpx.HTTPError))
    log = (tmp_path / "api.log").read_text(errors="replace")[-4000:]
    assert not errors and not probe.failures, f"{errors}, probe: {probe.failures}; the server's log:\n{log}"
    answers = [outcome for outcome in outcomes if isinstance(outcome, httpx.Response)]
    during = probe.times
    with httpx.Client(base_url=busy_server, timeout=5) as client:
        after = []
        for _ in range(5):
            before = time.monotonic()
            assert client.get("/healthz").status_code == 200
            after.append(time.monotonic() - before)
    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0 and statuses[429] > 0, statuses  # past 600 a minute, all 429
    assert statuses[200] + statuses[503] <= PREDICT_LIMIT
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["Retry-After"]) >= 1
            assert answer.json()["code"] == "predict_queue_full"
        elif answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1
            assert answer.headers["RateLimit-Limit"] == str(PREDICT_LIMIT)
            assert answer.headers["RateLimit-Remaining"] == "0"
            assert answer.json()["code"] == "rate_limit_exceeded"
        else:
            assert answer.json()["predictions"][0]["top_k"]
    assert during, "no probe ran during the burst"
    assert max(during) < 2.0, during
    assert max(after) < 0.5, after
    with httpx.Client(base_url=busy_server) as client:
        text = client.get("/metrics").text
    assert metric(text, "fmnist_predict_shed_total") == statuses[503]
    assert metric(text, "fmnist_rate_limited_total", scope="predict") == statuses[429]
    print(
        f"burst of {BURST} in {took:.1f} s: {dict(statuses)}; /healthz during: {len(during)} probes, "
        f"max {max(during) * 1000:.0f} ms"
    )


# -- idle connections ---------------------------------------------------------------------------------------------


def get_health(connection: socket.socket) -> bytes:
    """Sends GET /healthz on ``connection`` and reads the whole answer (headers, then Content-Length bytes)."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536) or b"<closed>"
        assert not answer.endswith(b"<closed>"), answer
    head, body = answer.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head.split(b"\r\n")[0]


def test_the_server_outlasts_a_clients_idle_expiry() -> None:
    """A server that closes an idle connection as the client sends its next request on it resets that request
    (a connection reset, not an answer); the client, or the proxy before it, must be the one to close first."""
    default = Settings.model_fields["keep_alive_seconds"].default
    assert default > httpx.Limits().keepalive_expiry  # httpx's own: 5 s
    assert default > 60  # AWS's load balancers keep idle connections 60 s by default


@pytest.mark.e2e
def test_an_idle_connection_stays_open_and_closes_at_fmnist_keep_alive_seconds(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    with serving(settings, tmp_path / "api.log", FMNIST_KEEP_ALIVE_SECONDS="2") as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            assert get_health(connection) == b"HTTP/1.1 200 OK"
            time.sleep(1.0)  # idle, under the setting: the same connection answers again
            assert get_health(connection) == b"HTTP/1.1 200 OK"
            idle = time.monotonic()
            assert connection.recv(1) == b""  # then the server closes it, once it has been idle 2 s
            closed_after = time.monotonic() - idle
    assert 1.5 < closed_after < 5.0, closed_after
