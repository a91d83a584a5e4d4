"""Ownership: jobs, sweeps and studies belong to the key that created them. Every key with the scope reads
them; only the owner or an admin key cancels or labels them (403 `not_owner`, naming the owner's key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api import auth
from service.api.app import create_app
from service.settings import Settings
from service.store.db import Database
from tests.api.test_auth import bearer

TINY = {"hidden_layers": [8], "epochs": 1, "batch_size": 64}
ENV_KEY = "bootstrap-admin-key-for-ownership-tests"
STUDY = {"base": TINY, "space": {"lr": {"choices": [0.1, 0.2]}}, "sampler": "grid", "trials": 2, "seed": 0}


@pytest.fixture
def client(settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    with TestClient(create_app(settings.model_copy(update={"api_keys": SecretStr(ENV_KEY)}))) as test_client:
        yield test_client


@pytest.fixture
def keys(db: Database) -> dict[str, Any]:
    """Two train keys of different people and an admin key from the key table."""
    alice, alice_key = auth.create_key(db, "alice-notebook", ["train", "predict"])
    _, bob_key = auth.create_key(db, "bob-notebook", ["train", "predict"])
    _, admin_key = auth.create_key(db, "ops", ["admin"])
    return {"alice": bearer(alice_key), "alice_id": alice.id, "bob": bearer(bob_key), "admin": bearer(admin_key)}


def created(client: TestClient, path: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def assert_not_owner(response: Any, kind: str, row_id: str, alice_id: str, action: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "not_owner"
    assert body["detail"] == (
        f"{kind} {row_id!r} belongs to the API key 'alice-notebook' ({alice_id}): "
        f"only that key or an admin key may {action} it"
    )


def test_another_key_reads_but_cannot_cancel_or_label(client: TestClient, keys: dict[str, Any]) -> None:
    alice, bob, alice_id = keys["alice"], keys["bob"], keys["alice_id"]
    job = created(client, "/v1/jobs", TINY, alice)
    sweep = created(client, "/v1/sweeps", {"base": TINY, "grid": {"lr": [0.1, 0.2]}}, alice)
    study = created(client, "/v1/studies", STUDY, alice)

    # Reading stays open to every key with the scope.
    assert client.get(f"/v1/jobs/{job}", headers=bob).status_code == 200
    assert client.get(f"/v1/sweeps/{sweep}", headers=bob).status_code == 200
    assert client.get(f"/v1/studies/{study}", headers=bob).status_code == 200
    assert job in [row["id"] for row in client.get("/v1/jobs", headers=bob).json()["data"]]

    assert_not_owner(client.post(f"/v1/jobs/{job}/cancel", headers=bob), "job", job, alice_id, "cancel")
    labelled = client.patch(f"/v1/jobs/{job}", json={"tags": {"x": "y"}, "note": "mine"}, headers=bob)
    assert_not_owner(labelled, "job", job, alice_id, "label")
    assert_not_owner(client.post(f"/v1/sweeps/{sweep}/cancel", headers=bob), "sweep", sweep, alice_id, "cancel")
    assert_not_owner(client.post(f"/v1/studies/{study}/cancel", headers=bob), "study", study, alice_id, "cancel")

    # Nothing changed.
    after = client.get(f"/v1/jobs/{job}", headers=alice).json()
    assert after["status"] == "queued" and not after["tags"] and after["note"] is None
    sweep_jobs = client.get(f"/v1/sweeps/{sweep}", headers=alice).json()["jobs"]
    assert {row["status"] for row in sweep_jobs} == {"queued"}
    assert client.get(f"/v1/studies/{study}", headers=alice).json()["status"] == "running"

    # The owner may.
    assert client.patch(f"/v1/jobs/{job}", json={"tags": {"team": "a"}}, headers=alice).json()["tags"] == {"team": "a"}
    assert client.post(f"/v1/jobs/{job}/cancel", headers=alice).json()["status"] == "cancelled"
    assert client.post(f"/v1/sweeps/{sweep}/cancel", headers=alice).status_code == 200


def test_an_admin_key_may_change_anyones(client: TestClient, keys: dict[str, Any]) -> None:
    job = created(client, "/v1/jobs", TINY, keys["alice"])
    study = created(client, "/v1/studies", STUDY, keys["alice"])
    for admin in (keys["admin"], bearer(ENV_KEY)):  # a stored admin key and an environment one
        assert client.patch(f"/v1/jobs/{job}", json={"note": "checked"}, headers=admin).status_code == 200
    assert client.post(f"/v1/jobs/{job}/cancel", headers=keys["admin"]).json()["status"] == "cancelled"
    assert client.post(f"/v1/studies/{study}/cancel", headers=bearer(ENV_KEY)).json()["status"] == "cancelled"


def test_an_unknown_id_is_404_not_403(client: TestClient, keys: dict[str, Any]) -> None:
    bob = keys["bob"]
    for method, path, code in [
        ("post", "/v1/jobs/nope/cancel", "job_not_found"),
        ("patch", "/v1/jobs/nope", "job_not_found"),
        ("post", "/v1/sweeps/nope/cancel", "sweep_not_found"),
        ("post", "/v1/studies/nope/cancel", "study_not_found"),
    ]:
        response = client.request(method, path, json={"note": "x"} if method == "patch" else None, headers=bob)
        assert (response.status_code, response.json()["code"]) == (404, code), (method, path)


def test_a_job_from_the_open_mode_has_no_owner_and_only_admins_change_it(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(settings)) as open_client:  # no keys yet: anyone may do anything
        job = created(open_client, "/v1/jobs", TINY, {})
        assert open_client.patch(f"/v1/jobs/{job}", json={"note": "open"}).status_code == 200
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    _, trainer = auth.create_key(db, "trainer", ["train"])
    _, admin = auth.create_key(db, "ops", ["admin"])
    with TestClient(create_app(settings)) as client:
        refused = client.post(f"/v1/jobs/{job}/cancel", headers=bearer(trainer))
        assert refused.status_code == 403 and refused.json()["code"] == "not_owner"
        assert refused.json()["detail"] == (
            f"job {job!r} was created while the server had no API keys, so it has no owner: "
            "only an admin key may cancel it"
        )
        assert client.post(f"/v1/jobs/{job}/cancel", headers=bearer(admin)).json()["status"] == "cancelled"


def test_with_owner_only_reads_a_key_sees_only_its_own_runs(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch, keys: dict[str, Any]
) -> None:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    owner_only = settings.model_copy(update={"api_keys": SecretStr(ENV_KEY), "owner_only_reads": True})
    with TestClient(create_app(owner_only)) as client:
        alice, bob, admin = keys["alice"], keys["bob"], keys["admin"]
        job = created(client, "/v1/jobs", TINY, alice)
        sweep = created(client, "/v1/sweeps", {"base": TINY, "grid": {"lr": [0.1, 0.2]}}, alice)
        study = created(client, "/v1/studies", STUDY, alice)
        bobs = created(client, "/v1/jobs", TINY, bob)

        # Another key's runs do not exist for bob: every route that names one is a 404, writes included.
        for method, path, code in [
            ("get", f"/v1/jobs/{job}", "job_not_found"),
            ("get", f"/v1/jobs/{job}/metrics", "job_not_found"),
            ("get", f"/v1/jobs/{job}/events", "job_not_found"),
            ("get", f"/v1/jobs/{job}/curves.svg", "job_not_found"),
            ("post", f"/v1/jobs/{job}/cancel", "job_not_found"),
            ("patch", f"/v1/jobs/{job}", "job_not_found"),
            ("delete", f"/v1/jobs/{job}", "job_not_found"),
            ("get", f"/v1/sweeps/{sweep}", "sweep_not_found"),
            ("post", f"/v1/sweeps/{sweep}/cancel", "sweep_not_found"),
            ("get", f"/v1/studies/{study}", "study_not_found"),
            ("get", f"/v1/studies/{study}/history.svg", "study_not_found"),
            ("post", f"/v1/studies/{study}/cancel", "study_not_found"),
        ]:
            response = client.request(method, path, json={"note": "x"} if method == "patch" else None, headers=bob)
            assert (response.status_code, response.json()["code"]) == (404, code), (method, path, response.text)
        compared = client.get(f"/v1/compare?jobs={bobs},{job}", headers=bob)
        assert compared.status_code == 404 and compared.json()["detail"] == f"no job with id {job!r}"
        assert client.get(f"/v1/compare.svg?jobs={bobs},{job}", headers=bob).status_code == 404

        # Listings leave them out, counts included; a cursor of one key's listing is not another's.
        listed = client.get("/v1/jobs", headers=bob).json()
        assert [row["id"] for row in listed["data"]] == [bobs] and listed["count"] == 1
        assert client.get("/v1/sweeps", headers=bob).json() == {"data": [], "count": 0}
        assert client.get("/v1/studies", headers=bob).json()["count"] == 0
        alices = {row["id"] for row in client.get("/v1/jobs?limit=100", headers=alice).json()["data"]}
        assert bobs not in alices and job in alices and len(alices) == 1 + 2 + 2  # her job, sweep's and study's

        # The owner and an admin key read (and change) as before.
        assert client.get(f"/v1/jobs/{job}", headers=alice).status_code == 200
        assert client.get(f"/v1/compare?jobs={job}", headers=alice).status_code == 200
        assert client.get(f"/v1/sweeps/{sweep}", headers=admin).status_code == 200
        assert client.get("/v1/jobs?limit=100", headers=admin).json()["count"] == 1 + 2 + 2 + 1
        assert client.post(f"/v1/studies/{study}/cancel", headers=alice).json()["status"] == "cancelled"
