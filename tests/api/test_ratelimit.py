"""service/api/ratelimit.py: per-key request rate limits, checked with the scope, over real HTTP handling
(FastAPI's TestClient) on a real database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from service.api import auth
from service.api.app import create_app
from service.settings import Settings
from service.store.db import Database

TINY = {"hidden_layers": [8], "epochs": 1, "batch_size": 64}
SWEEP = {"base": TINY, "grid": {"lr": [0.1]}}
ENV_KEY = "bootstrap-admin-key-for-tests"
ONE_IMAGE = {"images": [[[0] * 28] * 28]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rate_limited(settings: Settings, *, keys: bool = True, **limits: str) -> TestClient:
    update: dict[str, Any] = {f"rate_limit_{scope}": limit for scope, limit in limits.items()}
    if keys:
        update["api_keys"] = SecretStr(ENV_KEY)
    return TestClient(create_app(settings.model_copy(update=update)))


def refused_count(client: TestClient, scope: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "fmnist_rate_limited_total" and sample.labels == {"scope": scope}:
                return sample.value
    raise AssertionError("no fmnist_rate_limited_total sample for " + scope)


def assert_limited(response: Any, limit: int, variable: str) -> int:
    """A 429 with the service's JSON error body and the rate-limit headers; its Retry-After."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == "rate_limit_exceeded"
    assert variable in body["detail"] and "Retry-After" in body["detail"]
    retry_after = int(response.headers["Retry-After"])
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert int(response.headers["RateLimit-Reset"]) == retry_after
    return retry_after


@pytest.fixture(autouse=True)
def keys_read_at_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)


def test_rate_limits_are_off_by_default(settings: Settings, db: Database) -> None:
    with TestClient(create_app(settings)) as client:
        answers = [client.get("/v1/models") for _ in range(50)]
        answers += [client.post("/v1/jobs", json=TINY) for _ in range(10)]
        assert {answer.status_code for answer in answers} == {200, 202}
        assert not any("RateLimit-Limit" in answer.headers for answer in answers)
        assert refused_count(client, "predict") == refused_count(client, "train") == 0


def test_a_key_past_its_predict_limit_gets_429_and_another_key_is_still_served(
    settings: Settings, db: Database
) -> None:
    _, first = auth.create_key(db, "first", ["predict"])
    _, second = auth.create_key(db, "second", ["predict"])
    with rate_limited(settings, predict="3/minute") as client:
        # Everything that needs the predict scope counts: reading models, predicting (here: no model yet, 409).
        assert client.get("/v1/models", headers=bearer(first)).status_code == 200
        assert client.get("/v1/aliases", headers=bearer(first)).status_code == 200
        assert client.post("/v1/predict/pixels", json=ONE_IMAGE, headers=bearer(first)).status_code == 409
        refused = client.get("/v1/models", headers=bearer(first))
        retry_after = assert_limited(refused, 3, "FMNIST_RATE_LIMIT_PREDICT")
        assert 55 <= retry_after <= 60  # the first of the three leaves the window a minute after it came
        assert f"API key {first.split('_')[1]}" in refused.json()["detail"]
        assert client.post("/v1/predict/pixels", json=ONE_IMAGE, headers=bearer(first)).status_code == 429
        # The other key has its own window.
        assert [client.get("/v1/models", headers=bearer(second)).status_code for _ in range(3)] == [200] * 3
        assert client.get("/v1/models", headers=bearer(second)).status_code == 429
        # The train scope has no limit here, and the probes none ever.
        assert client.get("/healthz").status_code == 200
        assert refused_count(client, "predict") == 3
        assert refused_count(client, "train") == 0


def test_an_admin_key_calling_predict_routes_is_held_to_the_predict_limit(settings: Settings, db: Database) -> None:
    with rate_limited(settings, predict="2/minute") as client:
        statuses = [client.get("/v1/models", headers=bearer(ENV_KEY)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        # Changing aliases needs `admin`, which has no limit.
        assert client.delete("/v1/aliases/nothing", headers=bearer(ENV_KEY)).status_code == 404


def test_a_prediction_the_fast_path_hands_to_the_route_is_counted_once(settings: Settings, db: Database) -> None:
    # A text part beside the file: the dedicated /v1/predict path checks the key (and counts the request), reads
    # the body, and leaves it to the route, whose own check must not count it again.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\nnot a png\r\n'
        b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
    )
    headers = {**bearer(ENV_KEY), "Content-Type": "multipart/form-data; boundary=b"}
    with rate_limited(settings, predict="3/minute") as client:
        statuses = [client.post("/v1/predict", content=body, headers=headers).status_code for _ in range(4)]
        assert statuses[:3] == [409] * 3  # the route's answer: no model trained yet
        assert_limited(client.post("/v1/predict", content=body, headers=headers), 3, "FMNIST_RATE_LIMIT_PREDICT")
        assert statuses[3] == 429
        assert refused_count(client, "predict") == 2


def test_a_request_refused_for_its_key_or_scope_is_not_counted(settings: Settings, db: Database) -> None:
    _, train_only = auth.create_key(db, "notebook", ["train"])
    with rate_limited(settings, predict="1/minute") as client:
        for _ in range(3):
            assert client.get("/v1/models", headers=bearer(train_only)).status_code == 403
            assert client.get("/v1/models", headers=bearer("not-a-key")).status_code == 401
        assert client.get("/v1/models", headers=bearer(ENV_KEY)).status_code == 200


def test_the_train_limit_counts_only_submissions(settings: Settings, db: Database) -> None:
    with rate_limited(settings, train="3/minute") as client:
        headers = bearer(ENV_KEY)
        first = client.post("/v1/jobs", json=TINY, headers=headers)
        assert first.status_code == 202
        assert client.post("/v1/sweeps", json=SWEEP, headers=headers).status_code == 202
        # Reading and cancelling create no work: not counted.
        for _ in range(5):
            assert client.get("/v1/jobs", headers=headers).status_code == 200
            assert client.get(f"/v1/jobs/{first.json()['id']}", headers=headers).status_code == 200
        assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=headers).status_code == 200
        assert client.post("/v1/jobs", json=TINY, headers=headers).status_code == 202
        assert_limited(client.post("/v1/jobs", json=TINY, headers=headers), 3, "FMNIST_RATE_LIMIT_TRAIN")
        assert_limited(client.post("/v1/sweeps", json=SWEEP, headers=headers), 3, "FMNIST_RATE_LIMIT_TRAIN")
        assert client.get("/v1/jobs", headers=headers).json()["count"] == 3  # the refused ones stored nothing
        assert refused_count(client, "train") == 2


def test_without_keys_each_client_address_has_its_own_window(settings: Settings, db: Database) -> None:
    app = create_app(settings.model_copy(update={"rate_limit_predict": "2/minute"}))
    with TestClient(app, client=("192.0.2.1", 5000)) as first, TestClient(app, client=("192.0.2.2", 5000)) as second:
        assert [first.get("/v1/models").status_code for _ in range(2)] == [200, 200]
        refused = first.get("/v1/models")
        assert_limited(refused, 2, "FMNIST_RATE_LIMIT_PREDICT")
        assert "address 192.0.2.1" in refused.json()["detail"]
        assert [second.get("/v1/models").status_code for _ in range(3)] == [200, 200, 429]


def test_the_window_moves_a_refused_caller_is_served_after_retry_after(settings: Settings, db: Database) -> None:
    with rate_limited(settings, keys=False, predict="2/second") as client:
        assert [client.get("/v1/models").status_code for _ in range(2)] == [200, 200]
        retry_after = assert_limited(client.get("/v1/models"), 2, "FMNIST_RATE_LIMIT_PREDICT")
        assert retry_after == 1
        time.sleep(retry_after + 0.05)
        assert client.get("/v1/models").status_code == 200


@pytest.fixture
def cors_client(settings: Settings, db: Database) -> Iterator[TestClient]:
    update = {"rate_limit_predict": "1/minute", "cors_origins": "https://dashboard.example"}
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        yield client


def test_a_page_s_scripts_may_read_the_rate_limit_headers(cors_client: TestClient) -> None:
    origin = {"Origin": "https://dashboard.example"}
    assert cors_client.get("/v1/models", headers=origin).status_code == 200
    refused = cors_client.get("/v1/models", headers=origin)
    assert refused.status_code == 429
    exposed = {name.strip().lower() for name in refused.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= exposed
