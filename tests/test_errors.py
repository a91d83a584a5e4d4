"""service/errors.py: one hierarchy with a status and a stable code per error, answered by the server in one form
and raised again by the client as the same class."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from models.preprocessing import CorruptImage, UnsupportedImage
from service import errors
from service.api.app import create_app
from service.api.errors import domain_error_answer, error_answer, status_and_code
from service.errors import (
    Conflict,
    InvalidRequest,
    JobNotFound,
    NotFound,
    QueueLimitReached,
    ServerError,
    ServiceError,
    Unauthenticated,
)
from service.settings import Settings
from service.store.db import Database

LEAVES = sorted(errors._BY_CODE.values(), key=lambda kind: kind.code)


def test_every_code_is_unique_snake_case_and_every_status_an_error_status() -> None:
    codes = [kind.code for kind in errors._subclasses(ServiceError)]
    assert len(codes) == len(set(codes)) > 25
    for kind in errors._subclasses(ServiceError):
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", kind.code), kind
        assert 400 <= kind.status < 600, kind


@pytest.mark.parametrize("kind", LEAVES, ids=lambda kind: kind.code)
def test_an_answer_comes_back_to_the_client_as_the_class_that_made_it(kind: type[ServiceError]) -> None:
    answer = error_answer(kind.status, "what to fix", kind.code)
    raised = ServiceError.from_answer(answer.status_code, json.loads(answer.body))
    assert type(raised) is kind
    assert (raised.status, raised.code, raised.detail) == (kind.status, kind.code, "what to fix")


def test_a_code_the_client_does_not_know_comes_back_as_its_status_family() -> None:
    raised = ServiceError.from_answer(404, {"detail": "no such thing", "code": "a_newer_servers_code"})
    assert type(raised) is NotFound and raised.code == "a_newer_servers_code"
    assert type(ServiceError.from_answer(413, {"detail": "big"})) is errors.PayloadTooLarge
    assert isinstance(ServiceError.from_answer(413, {"detail": "big"}), InvalidRequest)
    assert type(ServiceError.from_answer(502, "Bad Gateway")) is ServerError
    assert type(ServiceError.from_answer(418, {"detail": "teapot"})) is ServiceError
    # A code whose class answers another status is not trusted: the status decides.
    assert type(ServiceError.from_answer(500, {"detail": "x", "code": "job_not_found"})) is ServerError


def test_families_are_what_callers_catch_and_keep_the_builtin_bases() -> None:
    assert issubclass(JobNotFound, NotFound) and issubclass(JobNotFound, LookupError)
    assert issubclass(errors.InvalidSpec, InvalidRequest) and issubclass(errors.InvalidSpec, ValueError)
    assert issubclass(errors.ModelInUse, Conflict) and issubclass(Unauthenticated, PermissionError)


def test_the_answer_carries_the_headers_the_error_asks_for() -> None:
    limited = domain_error_answer(QueueLimitReached(2, 2, 1, retry_after=30))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "30"
    assert json.loads(limited.body)["code"] == "queue_limit_reached"
    unauthenticated = domain_error_answer(Unauthenticated("no API key"))
    assert unauthenticated.headers["www-authenticate"] == 'Bearer realm="fmnist"'


def test_errors_of_models_which_knows_no_http_have_a_status_and_code_too() -> None:
    assert status_and_code(UnsupportedImage("a WebP image")) == (415, "unsupported_image")
    assert status_and_code(CorruptImage("truncated")) == (400, "corrupt_image")
    assert status_and_code(RuntimeError("a bug")) is None


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.db
@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        ("GET", "/v1/jobs/nope", None, {}, 404, "job_not_found"),
        ("GET", "/v1/sweeps/nope", None, {}, 404, "sweep_not_found"),
        ("GET", "/v1/models/nope", None, {}, 404, "model_not_found"),
        ("GET", "/v1/no-such-route", None, {}, 404, "not_found"),
        ("PATCH", "/v1/jobs", None, {}, 405, "method_not_allowed"),
        ("POST", "/v1/jobs", b'{"epochs": 0}', {"content-type": "application/json"}, 422, "validation_error"),
        ("POST", "/v1/jobs", b'{"epochs": 1}', {"content-type": "application/x-www-form-urlencoded"}, 415, None),
        ("PUT", "/v1/aliases/Bad Name", b'{"model": "x"}', {"content-type": "application/json"}, 422, None),
    ],
)
def test_every_error_answer_has_a_detail_and_a_code(
    client: TestClient,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) >= {"detail", "code"} and answer["detail"]
    if code is not None:
        assert answer["code"] == code
    raised = ServiceError.from_answer(response.status_code, answer)
    assert raised.status == status and raised.code == answer["code"]
