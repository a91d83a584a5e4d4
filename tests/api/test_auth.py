"""API keys, scopes, per-key queue limits, Idempotency-Key, CORS and body limits, over real HTTP handling
(FastAPI's TestClient) on a real database; `fmnist serve`'s refusal to listen openly without a key."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from service.api import auth
from service.api.app import create_app
from service.settings import Settings
from service.store.db import Database
from service.store.tables import ApiKey, Job
from tests.support.servers import free_port, wait_ready

TINY = {"hidden_layers": [8], "epochs": 1, "batch_size": 64}
ENV_KEY = "bootstrap-admin-key-for-tests"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API with an environment admin key, reading the key table on every request."""
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    with TestClient(create_app(settings.model_copy(update={"api_keys": SecretStr(ENV_KEY)}))) as client:
        yield client


def test_without_any_key_the_api_is_open(settings: Settings, db: Database) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/jobs", json=TINY).status_code == 202


def test_with_keys_every_v1_route_needs_one(keyed: TestClient) -> None:
    for method, path in [
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("get", "/v1/sweeps"),
        ("get", "/v1/models"),
        ("get", "/v1/aliases"),
        ("post", "/v1/predict"),
        ("post", "/v1/predict/pixels"),
    ]:
        response = keyed.request(method, path, json=TINY if path == "/v1/jobs" else None)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in response.json()["detail"]
    wrong = keyed.get("/v1/jobs", headers=bearer("not-a-key"))
    assert wrong.status_code == 401 and "not known" in wrong.json()["detail"]
    assert keyed.get("/v1/jobs", headers={"Authorization": f"Basic {ENV_KEY}"}).status_code == 401
    # Probes and docs stay open.
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    assert keyed.get("/openapi.json").status_code == 200
    assert keyed.post("/v1/jobs", json=TINY, headers=bearer(ENV_KEY)).status_code == 202


def test_scopes_decide_what_a_key_may_do(keyed: TestClient, db: Database) -> None:
    _, predict_only = auth.create_key(db, "dashboard", ["predict"])
    _, train_only = auth.create_key(db, "notebook", ["train"])

    refused = keyed.post("/v1/jobs", json=TINY, headers=bearer(predict_only))
    assert refused.status_code == 403 and "`train` scope" in refused.json()["detail"]
    assert keyed.get("/v1/models", headers=bearer(predict_only)).status_code == 200
    assert (
        keyed.post("/v1/predict/pixels", json={"images": [[[0] * 28] * 28]}, headers=bearer(train_only)).status_code
        == 403
    )
    # Changing the registry needs admin.
    moved = keyed.put("/v1/aliases/production", json={"model_id": "0" * 32}, headers=bearer(predict_only))
    assert moved.status_code == 403 and "`admin` scope" in moved.json()["detail"]
    assert keyed.delete("/v1/models/" + "0" * 32, headers=bearer(train_only)).status_code == 403
    assert keyed.post("/v1/jobs", json=TINY, headers=bearer(train_only)).status_code == 202
    # The environment's key is an admin key: the alias route answers on its merits (no such model).
    assert keyed.put("/v1/aliases/production", json={"model_id": "0" * 32}, headers=bearer(ENV_KEY)).status_code == 404


def test_keys_are_stored_hashed_and_revocation_takes_effect(keyed: TestClient, db: Database) -> None:
    row, key = auth.create_key(db, "ci", ["train"])
    assert key.startswith("fmk_") and row.id in key
    with db.read() as session:
        stored = session.scalars(select(ApiKey)).one()
    assert stored.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(stored.__dict__)
    assert keyed.get("/v1/jobs", headers=bearer(key)).status_code == 200
    auth.revoke_key(db, row.id)
    assert keyed.get("/v1/jobs", headers=bearer(key)).status_code == 401
    # A key's secret part changed by one character is refused.
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert keyed.get("/v1/jobs", headers=bearer(tampered)).status_code == 401


def test_bad_key_requests_are_refused(db: Database) -> None:
    with pytest.raises(auth.InvalidKeyRequest):
        auth.create_key(db, "x", ["root"])
    with pytest.raises(auth.InvalidKeyRequest):
        auth.create_key(db, "x", [])
    with pytest.raises(auth.InvalidKeyRequest):
        auth.create_key(db, "", ["train"])
    with pytest.raises(auth.KeyNotFound):
        auth.revoke_key(db, "nope")


def test_each_key_has_its_own_limit_of_queued_jobs(settings: Settings, db: Database) -> None:
    limited = settings.model_copy(update={"api_keys": SecretStr(ENV_KEY), "max_queued_per_key": 2})
    _, first = auth.create_key(db, "first", ["train"])
    _, second = auth.create_key(db, "second", ["train"])
    with TestClient(create_app(limited)) as client:
        ids = [client.post("/v1/jobs", json=TINY, headers=bearer(first)).json()["id"] for _ in range(2)]
        over = client.post("/v1/jobs", json=TINY, headers=bearer(first))
        assert over.status_code == 429
        assert int(over.headers["Retry-After"]) > 0
        assert "limit is 2" in over.json()["detail"]
        # A sweep counts all its jobs.
        sweep = client.post("/v1/sweeps", json={"base": TINY, "grid": {"lr": [0.1, 0.2, 0.3]}}, headers=bearer(second))
        assert sweep.status_code == 429
        assert client.post("/v1/jobs", json=TINY, headers=bearer(second)).status_code == 202
        # Cancelling one frees a place.
        assert client.post(f"/v1/jobs/{ids[0]}/cancel", headers=bearer(first)).status_code == 200
        assert client.post("/v1/jobs", json=TINY, headers=bearer(first)).status_code == 202
    with db.read() as session:
        owners = session.scalars(select(Job.owner)).all()
    assert sorted(set(owners)) == sorted({first.split("_")[1], second.split("_")[1]})


# -- Idempotency-Key --------------------------------------------------------------------------------


def submit(client: TestClient, body: Any, key: str | None, **headers: str) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/jobs", json=body, headers={**extra, **headers})


def test_a_retried_submission_returns_the_first_job(settings: Settings, db: Database) -> None:
    with TestClient(create_app(settings)) as client:
        first = submit(client, TINY, "order-1")
        again = submit(client, dict(reversed(list(TINY.items()))), "order-1")  # same meaning, other order
        assert first.status_code == 202 and again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Location"] == first.headers["Location"]
        other = submit(client, {**TINY, "lr": 0.5}, "order-1")
        assert other.status_code == 409 and "different request" in other.json()["detail"]
        assert submit(client, TINY, "order-2").json()["id"] != first.json()["id"]
        assert submit(client, TINY, None).status_code == 202
    with db.read() as session:
        assert len(session.scalars(select(Job)).all()) == 3


def test_idempotency_keys_belong_to_their_api_key(keyed: TestClient, db: Database) -> None:
    _, alice = auth.create_key(db, "alice", ["train"])
    _, bob = auth.create_key(db, "bob", ["train"])
    mine = submit(keyed, TINY, "same", **bearer(alice))
    theirs = submit(keyed, {**TINY, "lr": 0.2}, "same", **bearer(bob))
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\tkey"])
def test_malformed_idempotency_keys_are_422(settings: Settings, db: Database, key: str) -> None:
    with TestClient(create_app(settings)) as client:
        response = submit(client, TINY, key)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_concurrent_retries_create_one_job(settings: Settings, db: Database) -> None:
    answers: list[httpx.Response] = []
    with TestClient(create_app(settings)) as client:

        def send() -> None:
            answers.append(submit(client, TINY, "burst"))

        threads = [threading.Thread(target=send) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(a.status_code for a in answers) == [200] * 11 + [202]
    assert len({a.json()["id"] for a in answers}) == 1


def test_a_retried_sweep_returns_the_first_sweep(settings: Settings, db: Database) -> None:
    body = {"base": TINY, "grid": {"lr": [0.1, 0.2]}}
    with TestClient(create_app(settings)) as client:
        first = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "grid-1"})
        again = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "grid-1"})
        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json()["id"] == first.json()["id"]
        assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
        changed = client.post("/v1/sweeps", json={**body, "grid": {"lr": [0.3]}}, headers={"Idempotency-Key": "grid-1"})
        assert changed.status_code == 409
    with db.read() as session:
        assert len(session.scalars(select(Job)).all()) == 2


# -- CORS and body limits -----------------------------------------------------------------------------


def test_cors_is_off_unless_configured(settings: Settings, db: Database) -> None:
    preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings)) as client:
        assert "access-control-allow-origin" not in client.options("/v1/jobs", headers=preflight).headers
    allowed = settings.model_copy(update={"cors_origins": "https://dash.example"})
    with TestClient(create_app(allowed)) as client:
        response = client.options("/v1/jobs", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://dash.example"
        other = client.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # A page on the allowed origin can read the request id, to quote it in a bug report.
        answer = client.get("/healthz", headers={"Origin": "https://dash.example"})
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
        assert answer.headers["x-request-id"]


def test_a_body_over_the_limit_is_refused_while_it_streams(settings: Settings, db: Database) -> None:
    small = settings.model_copy(update={"max_request_bytes": 4096, "max_upload_bytes": 1024})
    sent = 0

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is known only by counting
        nonlocal sent
        for _ in range(1000):
            sent += 1024
            yield b"x" * 1024

    with TestClient(create_app(small)) as client:
        response = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert "larger than the limit" in response.json()["detail"]
        declared = client.post("/v1/jobs", content=b"x" * 200_000, headers={"Content-Type": "application/json"})
        assert declared.status_code == 413


# -- fmnist serve ---------------------------------------------------------------------------------------


def run_serve(settings: Settings, host: str, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FMNIST_HOME": str(settings.home), **extra_env}
    if settings.database_url:
        env["FMNIST_DATABASE_URL"] = settings.database_url
    command = [sys.executable, "-m", "service.cli", "serve", "--host", host, "--port", str(free_port())]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(settings: Settings, db: Database) -> None:
    refused = run_serve(settings, "0.0.0.0", {"FMNIST_API_KEYS": ""})
    _, stderr = refused.communicate(timeout=60)
    assert refused.returncode == 2
    assert b"refusing to listen on 0.0.0.0" in stderr and b"fmnist keys create" in stderr


def test_serve_listens_beyond_loopback_once_a_key_exists(settings: Settings, db: Database) -> None:
    auth.create_key(db, "ops", ["admin"])
    port = free_port()
    env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_API_KEYS": ""}
    if settings.database_url:
        env["FMNIST_DATABASE_URL"] = settings.database_url
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", str(port)], env=env
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            wait_ready(client, process)
            assert client.get("/v1/jobs").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
