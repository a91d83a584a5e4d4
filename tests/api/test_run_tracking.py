"""Run tracking over HTTP: PATCH /v1/jobs/{id} (tags and notes), GET /v1/jobs's filters, sorts and cursors, and
GET /v1/compare. On SQLite and, in the `-m db` pass, PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.training import EpochMetrics
from service.api.app import create_app
from service.jobs import queue
from service.settings import Settings
from service.store.db import Database
from tests.support.jobs import add_job
from tests.support.specs import spec_of

pytestmark = pytest.mark.db


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def listed(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/v1/jobs", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


# -- PATCH /v1/jobs/{id} -----------------------------------------------------------------------------------


def test_patch_merges_tags_replaces_the_note_and_answers_the_job(client: TestClient, db: Database) -> None:
    job_id = add_job(db)
    first = client.patch(f"/v1/jobs/{job_id}", json={"tags": {"team": "vision", "baseline": "yes"}, "note": "try 1"})
    assert first.status_code == 200
    body = first.json()
    assert body["id"] == job_id and body["status"] == "queued"
    assert (body["tags"], body["note"]) == ({"baseline": "yes", "team": "vision"}, "try 1")
    assert {"test_acc", "val_acc", "train_seconds"} <= body.keys()
    second = client.patch(f"/v1/jobs/{job_id}", json={"tags": {"baseline": None, "owner": "ana"}}).json()
    assert (second["tags"], second["note"]) == ({"owner": "ana", "team": "vision"}, "try 1")
    assert client.patch(f"/v1/jobs/{job_id}", json={"note": None}).json()["note"] is None
    assert client.patch(f"/v1/jobs/{job_id}", json={}).json()["tags"] == {"owner": "ana", "team": "vision"}
    cleared = client.patch(f"/v1/jobs/{job_id}", json={"tags": None}).json()
    assert cleared["tags"] == {} and client.get(f"/v1/jobs/{job_id}").json()["tags"] == {}


def test_patch_of_an_unknown_job_is_404(client: TestClient) -> None:
    response = client.patch("/v1/jobs/nope", json={"note": "x"})
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"


TOO_MANY = {f"k{i}": "v" for i in range(65)}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"tags": {"bad key": "x"}}, ["body", "tags", "bad key", "[key]"]),
        ({"tags": {"": "x"}}, ["body", "tags", "", "[key]"]),
        ({"tags": {"k" * 65: "x"}}, ["body", "tags", "k" * 65, "[key]"]),
        ({"tags": {"é": "x"}}, ["body", "tags", "é", "[key]"]),
        ({"tags": {"k": "x" * 257}}, ["body", "tags", "k"]),
        ({"tags": {"k": "line\nbreak"}}, ["body", "tags", "k"]),
        ({"tags": {"k": 5}}, ["body", "tags", "k"]),
        ({"tags": ["team"]}, ["body", "tags"]),
        ({"tags": TOO_MANY}, ["body", "tags"]),
        ({"note": "x" * 10_001}, ["body", "note"]),
        ({"note": "a\x00b"}, ["body", "note"]),
        ({"note": 5}, ["body", "note"]),
        ({"status": "succeeded"}, ["body", "status"]),
    ],
)
def test_patch_out_of_bounds_is_422_naming_the_field(
    client: TestClient, db: Database, body: dict[str, Any], loc: list[str]
) -> None:
    job_id = add_job(db)
    response = client.patch(f"/v1/jobs/{job_id}", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert client.get(f"/v1/jobs/{job_id}").json()["tags"] == {}


def test_a_lone_surrogate_in_a_note_is_422(client: TestClient, db: Database) -> None:
    job_id = add_job(db)
    body = b'{"note": "\\ud800"}'
    response = client.patch(f"/v1/jobs/{job_id}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "note"]


def test_the_33rd_tag_is_422_and_the_limits_hold_exactly(client: TestClient, db: Database) -> None:
    job_id = add_job(db)
    full = {f"k{i}": "v" * 256 for i in range(31)} | {"x" * 64: ""}
    assert client.patch(f"/v1/jobs/{job_id}", json={"tags": full}).status_code == 200
    response = client.patch(f"/v1/jobs/{job_id}", json={"tags": {"another": "v"}})
    assert response.status_code == 422 and response.json()["code"] == "too_many_tags"
    assert response.json()["detail"][0]["loc"] == ["body", "tags"]
    assert client.patch(f"/v1/jobs/{job_id}", json={"tags": {"k0": None, "another": "v"}}).status_code == 200


# -- GET /v1/jobs ------------------------------------------------------------------------------------------


def test_filters_sorts_and_pages_over_http(client: TestClient, db: Database) -> None:
    adam = add_job(db, spec_of(optimizer="adam", lr=0.001, hidden_layers=[256]), test_acc=0.8, tags={"team": "v"})
    wide = add_job(db, spec_of(hidden_layers=[1024, 512]), test_acc=0.9, val_acc=0.85, tags={"team": "s"})
    fresh = add_job(db, spec_of(hidden_layers=[256]))
    assert listed(client, optimizer="adam") == [adam]
    assert listed(client, lr="0.001") == [adam] and listed(client, lr=0.1) == [fresh, wide]
    assert listed(client, hidden_layers="[256]") == [fresh, adam]
    assert listed(client, hidden_layers="[1024, 512]") == [wide] == listed(client, hidden_layers="[1024,512]")
    assert listed(client, tag="team") == [wide, adam] and listed(client, tag=["team", "team:v"]) == [adam]
    assert listed(client, sort="-test_acc") == [wide, adam, fresh]
    assert listed(client, sort="test_acc") == [adam, wide, fresh], "no accuracy: last either way"
    assert listed(client, min_test_acc=0.85) == [wide] and listed(client, min_val_acc=0.5) == [wide]
    assert listed(client, status="queued", epochs=10, activation="relu", nesterov="false") == [fresh, wide, adam]
    assert listed(client, seed=queue_seed(client, adam)) == [adam]


def queue_seed(client: TestClient, job_id: str) -> int:
    seed: int = client.get(f"/v1/jobs/{job_id}").json()["seed"]
    return seed


def test_cursor_pages_through_http_give_the_unpaged_listing(client: TestClient, db: Database) -> None:
    for number in range(11):
        add_job(db, test_acc=[None, 0.5, 0.7][number % 3])
    for sort in ("-created_at", "-test_acc", "test_acc"):
        everything = listed(client, sort=sort)
        found, cursor = [], None
        while True:
            params = {"sort": sort, "limit": 4, "count": "false", **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/jobs", params=params).json()
            assert page["count"] is None and len(page["data"]) <= 4
            found += [job["id"] for job in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert found == everything and len(found) == 11


def test_the_page_answer_keeps_its_shape(client: TestClient, db: Database) -> None:
    add_job(db)
    add_job(db)
    page = client.get("/v1/jobs", params={"limit": 1}).json()
    assert (page["count"], page["limit"], page["offset"]) == (2, 1, 0) and isinstance(page["next_cursor"], str)
    last = client.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()
    assert last["next_cursor"] is None and last["offset"] == 1


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"lr": "abc"}, ["query", "lr"]),
        ({"lr": "0"}, ["query", "lr"]),
        ({"lr": "inf"}, ["query", "lr"]),
        ({"epochs": "1.5"}, ["query", "epochs"]),
        ({"nesterov": "maybe"}, ["query", "nesterov"]),
        ({"optimizer": "adamx"}, ["query", "optimizer"]),
        ({"hidden_layers": "256"}, ["query", "hidden_layers"]),
        ({"hidden_layers": "[0]"}, ["query", "hidden_layers"]),
        ({"hidden_layers": "[8193]"}, ["query", "hidden_layers"]),
        ({"hidden_layers": "[1,2,3,4,5,6,7,8,9]"}, ["query", "hidden_layers"]),
        ({"optimiser": "adam"}, ["query", "optimiser"]),
        ({"spec": "x"}, ["query", "spec"]),
        ({"sort": "spec"}, ["query", "sort"]),
        ({"sort": "-id"}, ["query", "sort"]),
        ({"tag": "bad key:x"}, ["query", "tag", 0]),
        ({"tag": "team:a\x01b"}, ["query", "tag", 0]),
        ({"min_test_acc": "1.5"}, ["query", "min_test_acc"]),
        ({"cursor": "abc"}, ["query", "cursor"]),
        ({"cursor": "x" * 513}, ["query", "cursor"]),
        ({"count": "perhaps"}, ["query", "count"]),
    ],
)
def test_a_bad_filter_or_an_unknown_parameter_is_422(
    client: TestClient, params: dict[str, str], loc: list[Any]
) -> None:
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_a_cursor_used_with_another_sort_or_filter_is_422(client: TestClient, db: Database) -> None:
    for _ in range(3):
        add_job(db, test_acc=0.5)
    cursor = client.get("/v1/jobs", params={"limit": 1, "sort": "-test_acc", "tag": "t"}).json()["next_cursor"]
    assert cursor is None, "no job has the tag"
    cursor = client.get("/v1/jobs", params={"limit": 1, "sort": "-test_acc"}).json()["next_cursor"]
    for params in (
        {"sort": "test_acc"},
        {"sort": "-test_acc", "optimizer": "adam"},
        {"sort": "-test_acc", "offset": 1},
    ):
        response = client.get("/v1/jobs", params={"cursor": cursor, **params})
        assert response.status_code == 422 and response.json()["code"] == "invalid_cursor", params
        assert response.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get("/v1/jobs", params={"cursor": cursor, "sort": "-test_acc", "limit": 10}).status_code == 200


@pytest.mark.parametrize("value", ["' OR '1'='1", "x'); DROP TABLE jobs; --", "%", "a:b"])
def test_injection_looking_query_values_are_only_values(client: TestClient, db: Database, value: str) -> None:
    job_id = add_job(db, tags={"team": value})
    assert listed(client, tag=f"team:{value}") == [job_id]
    assert listed(client, tag=f"team:{value}x") == []
    for name in ("sweep_id", "study_id"):
        assert listed(client, **{name: value}) == []
    assert listed(client) == [job_id]


# -- GET /v1/compare ---------------------------------------------------------------------------------------


def finished(db: Database, lr: float, curve: list[float]) -> str:
    job = queue.enqueue_job(db, spec_of(hidden_layers=[8], epochs=3, seed=5, lr=lr), max_attempts=1)
    claim = queue.claim_next_job(db, "w", 30, device="cpu")
    assert claim is not None
    for epoch, acc in enumerate(curve, start=1):
        queue.record_epoch(
            db, claim, EpochMetrics(epoch=epoch, train_loss=1.0, train_acc=acc, test_acc=acc, seconds=0.5)
        )
    queue.fail_job(db, claim, "stopped")
    return job.id


def test_compare_answers_the_differing_fields_and_each_job_s_final_and_best(client: TestClient, db: Database) -> None:
    a = finished(db, 0.1, [0.5, 0.8, 0.7])
    b = finished(db, 0.2, [0.6])
    client.patch(f"/v1/jobs/{a}", json={"tags": {"team": "vision"}})
    response = client.get("/v1/compare", params={"jobs": f"{a},{b},{a}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fields"] == ["lr"]
    assert [job["id"] for job in body["jobs"]] == [a, b]
    first = body["jobs"][0]
    assert first["params"] == {"lr": 0.1} and first["tags"] == {"team": "vision"} and first["status"] == "failed"
    assert first["final"]["epoch"] == 3 and first["best_test"]["epoch"] == 2 and first["best_test"]["test_acc"] == 0.8
    assert first["best_val"] is None


def test_compare_404_names_the_unknown_jobs_and_takes_at_most_12(client: TestClient, db: Database) -> None:
    known = add_job(db)
    response = client.get("/v1/compare", params={"jobs": f"nope,{known},gone"})
    assert response.status_code == 404
    assert response.json() == {"detail": "no job with id 'nope', 'gone'", "code": "job_not_found"}
    response = client.get("/v1/compare", params={"jobs": ",".join([known] * 13)})
    assert response.status_code == 422 and "at most 12" in response.json()["detail"][0]["msg"]
    assert client.get("/v1/compare", params={"jobs": f"{known},"}).status_code == 422
