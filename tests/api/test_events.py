"""GET /v1/jobs/{id}/events against a real server process and a real worker process."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_sse import connect_sse

from service.api.app import create_app
from service.api.routes.events import StreamClosingServer
from service.settings import Settings
from service.store.db import Database
from tests.support.live import TINY, Live, live_stack
from tests.support.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MAX_STREAMS = 2
# Slow enough (many small batches, many epochs) to be running while a test opens streams on it.
LONG = {"hidden_layers": [16], "batch_size": 4, "epochs": 1000, "seed": 2}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    with live_stack(
        tmp_path_factory.mktemp("events"), synthetic_data_dir, FMNIST_MAX_EVENT_STREAMS=str(MAX_STREAMS)
    ) as stack:
        yield stack


@pytest.fixture
def http(live: Live) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.admin_key}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=httpx.Timeout(30.0)) as client:
        yield client


def read_events(http: httpx.Client, job_id: str, **headers: str) -> list[tuple[str, str, Any]]:
    """(event, id, data) for every event until the server closes the stream."""
    with connect_sse(http, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(event.event, event.id, json.loads(event.data)) for event in source.iter_sse()]


def test_a_job_s_events_arrive_in_order_and_end_the_stream(http: httpx.Client) -> None:
    job = http.post("/v1/jobs", json={**TINY, "epochs": 6, "batch_size": 16}).json()
    events = read_events(http, job["id"])

    kinds = [kind for kind, _id, _data in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and kinds.count("end") == 1
    assert kinds[-2] == "status", "the final status comes just before `end`"
    epochs = [(event_id, data) for kind, event_id, data in events if kind == "epoch"]
    assert [data["epoch"] for _id, data in epochs] == [1, 2, 3, 4, 5, 6], "one event per epoch, in order"
    assert [event_id for event_id, _data in epochs] == ["1", "2", "3", "4", "5", "6"]
    statuses = [data["status"] for kind, _id, data in events if kind == "status"]
    assert statuses[-1] == "succeeded" and len(statuses) == len(set(statuses)), statuses
    assert set(statuses) <= {"queued", "running", "succeeded"}
    assert events[-1][2] == {"job_id": job["id"], "status": "succeeded"}

    # The payloads are the resources' own bodies.
    assert [data for _id, data in epochs] == http.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
    final = next(data for kind, _id, data in reversed(events) if kind == "status")
    assert final == http.get(f"/v1/jobs/{job['id']}").json()


def test_last_event_id_resumes_after_that_epoch(http: httpx.Client) -> None:
    job = http.post("/v1/jobs", json={**TINY, "epochs": 5}).json()
    read_events(http, job["id"])  # until it has ended

    resumed = read_events(http, job["id"], **{"Last-Event-ID": "3"})
    assert [kind for kind, _id, _data in resumed] == ["status", "epoch", "epoch", "end"]
    assert [data["epoch"] for kind, _id, data in resumed if kind == "epoch"] == [4, 5]
    assert [kind for kind, _id, _data in read_events(http, job["id"], **{"Last-Event-ID": "5"})] == ["status", "end"]


def test_a_cancelled_job_s_stream_ends_cancelled(http: httpx.Client) -> None:
    job = http.post("/v1/jobs", json=LONG).json()
    seen: list[tuple[str, Any]] = []
    with connect_sse(http, "GET", f"/v1/jobs/{job['id']}/events") as source:
        for event in source.iter_sse():
            seen.append((event.event, json.loads(event.data)))
            if event.event == "epoch" and event.id == "1":
                assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    statuses = [(data["status"], data["cancel_requested"]) for kind, data in seen if kind == "status"]
    assert ("running", True) in statuses, "a cancel request is news to a watcher"
    assert statuses[-1] == ("cancelled", True)
    assert seen[-1] == ("end", {"job_id": job["id"], "status": "cancelled"})


def test_open_streams_are_capped_and_a_closed_one_frees_its_slot(live: Live, http: httpx.Client) -> None:
    job = http.post("/v1/jobs", json=LONG).json()
    with contextlib.ExitStack() as streams:
        first = streams.enter_context(http.stream("GET", f"/v1/jobs/{job['id']}/events"))
        second = streams.enter_context(http.stream("GET", f"/v1/jobs/{job['id']}/events"))
        # Kept: an abandoned line iterator would close its connection when collected.
        lines = [stream.iter_lines() for stream in (first, second)]
        for stream, stream_lines in zip((first, second), lines, strict=True):
            assert stream.status_code == 200
            assert next(stream_lines) == "event: status"
        refused = http.get(f"/v1/jobs/{job['id']}/events")
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/json"
        assert int(refused.headers["retry-after"]) > 0
        assert "FMNIST_MAX_EVENT_STREAMS" in refused.json()["detail"]
        # Polling still answers while the streams are taken.
        assert http.get(f"/v1/jobs/{job['id']}").status_code == 200

        first.close()  # the client goes away: the server notices and frees the slot
        deadline = time.monotonic() + 10
        while True:
            with http.stream("GET", f"/v1/jobs/{job['id']}/events") as third:
                if third.status_code == 200:
                    assert next(iter(third.iter_lines())) == "event: status"
                    break
            assert time.monotonic() < deadline, "the closed stream's slot was not freed"
            time.sleep(0.1)
    http.post(f"/v1/jobs/{job['id']}/cancel")
    ended = read_events(http, job["id"])
    assert ended[-1][2]["status"] == "cancelled"


def test_an_unknown_job_is_404_before_any_stream(http: httpx.Client) -> None:
    response = http.get("/v1/jobs/no-such-job/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "no job with id 'no-such-job'", "code": "job_not_found"}


def test_a_bad_last_event_id_is_422(http: httpx.Client) -> None:
    job = http.post("/v1/jobs", json=TINY).json()
    response = http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "soon"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "last-event-id"]


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("predict", 403), ("wrong", 401)])
def test_the_stream_needs_a_key_with_the_train_scope(
    live: Live, http: httpx.Client, key: str | None, status: int
) -> None:
    job = http.post("/v1/jobs", json=TINY).json()
    headers = {} if key is None else {"Authorization": f"Bearer {live.predict_key if key == 'predict' else key}"}
    response = httpx.get(f"{live.url}/v1/jobs/{job['id']}/events", headers=headers, timeout=30)
    assert response.status_code == status
    assert "detail" in response.json()


def test_a_stopping_server_ends_its_streams_instead_of_waiting_for_their_jobs(settings: Settings, db: Database) -> None:
    """uvicorn stops only once every response has ended; a stream on a job nobody runs would never end."""
    app = create_app(settings)
    server = StreamClosingServer(
        uvicorn.Config(app, port=free_port(), log_level="warning", log_config=None), app.state.event_streams
    )
    thread = threading.Thread(target=server.run)  # not the main thread: uvicorn installs no signal handlers
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.config.port}"
        with httpx.Client(base_url=url, timeout=30) as http:
            job = http.post("/v1/jobs", json=TINY).json()  # no worker: it stays queued
            with connect_sse(http, "GET", f"/v1/jobs/{job['id']}/events") as source:
                events = source.iter_sse()
                assert next(events).event == "status"
                server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
                started = time.monotonic()
                assert [event.event for event in events] == [], "the stream ends, without `end`: the job goes on"
                assert time.monotonic() - started < 5
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server stopped"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.predictor.close()
        app.state.db.dispose()
