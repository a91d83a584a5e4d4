"""Schemathesis against the app's own OpenAPI document: no 5xx, and every answer documented and as documented.

The app runs in-process on a real SQLite database in a temp folder, with one tiny trained model (aliased
`production`), a finished job with metrics and a sweep, so that the model, alias, predict, job and sweep
routes have rows to serialise, not only 404s. Each operation gets schemathesis's examples and coverage
cases (boundary and invalid values) plus `MAX_EXAMPLES` generated ones, derandomized: the same requests
on every run.

What this cannot find: schemathesis builds bodies from the schemas and sends them through `json.dumps`, so
they are valid JSON a few levels deep (its free-form values have 2 to 5 leaves), with finite floats, text
without lone surrogates, file fields always sent as files; its Content-Type probes only check for a 5xx.
The 500s of issue 11 (a 500-deep array, a `"\ud800"` escape) and the 251 KB echo of a file sent as a text
field were out of its reach. tests/api/test_fuzz_json.py writes such bodies itself, for every route the
document lists.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from PIL import Image
from starlette.types import Receive, Scope, Send

from service.api.app import create_app
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.servers import openapi_document

TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 2, "seed": 1}
MAX_EXAMPLES = 30
INT64_MAX = 2**63 - 1


class ServedApp:
    """The ASGI app schemathesis calls, forwarding to the app the `served` fixture builds. That fixture runs
    the real app's lifespan; the lifespan schemathesis's client starts here is only answered."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.app is not None, "the `served` fixture plugs the app in"
        await self.app(scope, receive, send)


SERVED = ServedApp()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240601,
        "generation": {"deterministic": True, "database": "none"},
        "operations": [
            {
                # Any bytes fit `format: binary`; what makes them an image JSON Schema cannot say. A raw
                # `image/jpeg` body is generated as a real JPEG, one pixel of one colour: nothing in it to
                # classify, which is a 422 (documented).
                "include-name": "POST /v1/predict",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 400, 404, 409, 413, 415, 422]}},
            },
            {
                # A spec's rules across fields (early stopping needs a validation split, a preset's fields
                # must fit each other, a grid's values must make valid specs) are the model validator's;
                # the document carries each field's own bounds only.
                # A study's space adds its own: a field searched and fixed at once, conditions, a grid's size.
                "include-name": ["POST /v1/jobs", "POST /v1/sweeps", "POST /v1/studies"],
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 404, 409, 422, 429]}},
            },
        ],
    }
)
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)
schema.app = SERVED  # as `schemathesis.openapi.from_asgi` does: requests go to the app in-process


@dataclass(frozen=True)
class Served:
    """What the module's app holds: ids that exist, for the cases generated values rarely hit."""

    client: TestClient
    ids: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Served]:
    app_settings = Settings(
        home=tmp_path_factory.mktemp("fuzz-api") / "home",
        data_dir=synthetic_data_dir,
        lease_seconds=5,
        poll_seconds=0.05,
    )
    migrations.upgrade(app_settings.sqlalchemy_url)
    db = Database(app_settings.sqlalchemy_url)
    app = create_app(app_settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json=TINY).json()
        assert Worker(app_settings, db, torch.device("cpu"), burst=True).run_once()
        model_id = client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
        assert client.put("/v1/aliases/production", json={"model_id": model_id}).status_code == 201
        sweep = client.post("/v1/sweeps", json={"base": TINY, "grid": {"lr": [0.1, 0.2]}})
        assert sweep.status_code == 202
        SERVED.app = app
        study = client.post("/v1/studies", json={"base": TINY, "space": {"lr": {"low": 0.1, "high": 0.2}}, "trials": 2})
        assert study.status_code == 202
        ids = {"<job>": job["id"], "<model>": model_id, "<sweep>": sweep.json()["id"], "<study>": study.json()["id"]}
        yield Served(client, ids)
        SERVED.app = None
    db.dispose()


# Requests for rows that exist, which generated values rarely name (run before the fuzzing, which may change
# them), with the checks that need no generated case's metadata.
RESPONSE_CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.mark.parametrize(
    ("method", "path", "parameters", "status"),
    [
        ("GET", "/v1/models/{model_ref}", {"model_ref": "production"}, 200),
        ("GET", "/v1/models/{model_ref}", {"model_ref": "<model>"}, 200),
        ("GET", "/v1/models/{model_ref}/download", {"model_ref": "<model>"}, 200),
        ("GET", "/v1/models/{model_ref}/onnx", {"model_ref": "production"}, 200),
        ("DELETE", "/v1/models/{model_ref}", {"model_ref": "<model>"}, 409),  # the alias points at it
        ("GET", "/v1/aliases/{name}", {"name": "production"}, 200),
        ("GET", "/v1/jobs/{job_id}", {"job_id": "<job>"}, 200),
        ("GET", "/v1/jobs/{job_id}/metrics", {"job_id": "<job>"}, 200),
        ("GET", "/v1/jobs/{job_id}/curves.svg", {"job_id": "<job>"}, 200),
        ("GET", "/v1/jobs/{job_id}/curves.png", {"job_id": "<job>"}, 200),
        ("GET", "/v1/models/{model_ref}/samples.svg", {"model_ref": "production"}, 200),
        ("GET", "/v1/models/{model_ref}/evaluation", {"model_ref": "production"}, 200),
        ("GET", "/v1/models/{model_ref}/card", {"model_ref": "<model>"}, 200),
        ("GET", "/v1/models/{model_ref}/confusion.svg", {"model_ref": "<model>"}, 200),
        ("GET", "/v1/models/{model_ref}/calibration.svg", {"model_ref": "production"}, 200),
        ("GET", "/v1/models/{model_ref}/mistakes.svg", {"model_ref": "<model>"}, 200),
        ("POST", "/v1/jobs/{job_id}/cancel", {"job_id": "<job>"}, 409),  # it has ended
        ("GET", "/v1/sweeps/{sweep_id}", {"sweep_id": "<sweep>"}, 200),
        ("POST", "/v1/sweeps/{sweep_id}/cancel", {"sweep_id": "<sweep>"}, 200),
        ("GET", "/v1/studies/{study_id}", {"study_id": "<study>"}, 200),
        ("POST", "/v1/studies/{study_id}/cancel", {"study_id": "<study>"}, 200),
    ],
)
def test_existing_rows_answer_as_documented(
    served: Served, method: str, path: str, parameters: dict[str, str], status: int
) -> None:
    case = schema[path][method].Case(path_parameters={k: served.ids.get(v, v) for k, v in parameters.items()})
    assert case.call_and_validate(checks=RESPONSE_CHECKS).status_code == status


def test_predictions_answer_as_documented(served: Served) -> None:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:7, 4:24] = 220
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    files: dict[str, Any] = {"files": [buffer.getvalue()] * 2}
    uploaded = schema["/v1/predict"]["POST"].Case(body=files, media_type="multipart/form-data", query={"top_k": 10})
    assert len(uploaded.call_and_validate(checks=RESPONSE_CHECKS).json()["predictions"]) == 2
    arrays: dict[str, Any] = {"images": [image.tolist()]}
    pixels = schema["/v1/predict/pixels"]["POST"].Case(body=arrays, media_type="application/json")
    assert pixels.call_and_validate(checks=RESPONSE_CHECKS).json()["predictions"][0]["top_k"]


def test_run_tracking_answers_as_documented(served: Served) -> None:
    job_id = served.ids["<job>"]
    body = {"tags": {"team": "vision"}, "note": "labelled"}
    patch = schema["/v1/jobs/{job_id}"]["PATCH"].Case(
        path_parameters={"job_id": job_id}, body=body, media_type="application/json"
    )
    assert patch.call_and_validate(checks=RESPONSE_CHECKS).json()["tags"] == {"team": "vision"}
    query = {"tag": ["team:vision"], "sort": "-test_acc", "hidden_layers": "[16]", "limit": 1, "count": False}
    page = schema["/v1/jobs"]["GET"].Case(query=query).call_and_validate(checks=RESPONSE_CHECKS).json()
    assert [job["id"] for job in page["data"]] == [job_id] and page["count"] is None
    compare = schema["/v1/compare"]["GET"].Case(query={"jobs": job_id})
    assert compare.call_and_validate(checks=RESPONSE_CHECKS).json()["jobs"][0]["final"]["epoch"] == 2


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_every_operation_answers_as_documented(case: schemathesis.Case, served: Served) -> None:
    if case.operation.label == "GET /v1/jobs" and case.query:
        # A cursor is opaque: only one the listing handed out continues it, and any other is a 422 that no schema
        # can describe. Without it, every other parameter's documented values must be accepted.
        # (tests/api/test_run_tracking.py checks cursors.)
        case.query = {name: value for name, value in case.query.items() if name != "cursor"}
    case.call_and_validate()


# -- what the fuzzing found, as regression tests --------------------------------------------------


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_openapi_document_is_what_the_app_serves(client: TestClient) -> None:
    assert client.get("/openapi.json").json() == openapi_document()


def test_no_two_path_templates_differ_only_in_parameter_names() -> None:
    """OpenAPI forbids it (DELETE /v1/models/{model_id} beside GET /v1/models/{model_ref} did)."""
    shapes = [re.sub(r"\{[^}]*\}", "{}", path) for path in openapi_document()["paths"]]
    assert len(shapes) == len(set(shapes)), sorted(shapes)


def test_a_multipart_image_field_is_documented_as_a_file_never_null() -> None:
    """`anyOf: [binary, null]` led clients to send the text `null` in `file`, refused with a 422."""
    document = openapi_document()
    body = document["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    properties = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["properties"]
    assert properties["file"]["contentMediaType"] == "application/octet-stream" and "anyOf" not in properties["file"]
    assert properties["files"]["items"]["contentMediaType"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("method", "name", "expected"),
    [
        ("put", "abcdef0123456789abcdef0123456789", "not a model id"),  # fits the pattern, is a model id
        ("put", "a" * 65, "at most 64"),
        ("put", "Production", "should match pattern"),
        ("get", "has space", "should match pattern"),
        ("delete", "-x", "should match pattern"),
    ],
)
def test_invalid_alias_names_get_422_in_the_documented_list_form(
    client: TestClient, method: str, name: str, expected: str
) -> None:
    """An invalid name was a 422 whose `detail` was a string, where the document promises a list."""
    response = client.request(method, f"/v1/aliases/{name}", json={"model_id": "x"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["path", "name"] and expected in error["msg"], error


def test_a_huge_model_list_offset_is_422_not_500(client: TestClient) -> None:
    assert client.get("/v1/models", params={"offset": INT64_MAX}).json() == {"models": [], "count": 0}
    response = client.get("/v1/models", params={"offset": INT64_MAX + 1})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "offset"]


def test_predict_422s_are_documented_in_both_forms(client: TestClient) -> None:
    """No image (a sentence) and a bad parameter (FastAPI's list) were both 422s without a documented body."""
    responses = openapi_document()["paths"]["/v1/predict"]["post"]["responses"]
    documented = {
        ref["$ref"].rsplit("/", 1)[1] for ref in responses["422"]["content"]["application/json"]["schema"]["anyOf"]
    }
    # The third: no image usable, the first with nothing to classify in it (every image's entry beside `detail`).
    assert documented == {"ErrorPublic", "ValidationErrorsPublic", "PredictRefusedPublic"}
    assert isinstance(client.post("/v1/predict", data={"other": "x"}).json()["detail"], str)
    assert isinstance(client.post("/v1/predict", params={"top_k": 0}).json()["detail"], list)


def test_an_offset_past_64_bits_is_a_422_on_every_list(client: TestClient) -> None:
    for path in ("/v1/jobs", "/v1/sweeps", "/v1/studies", "/v1/models"):
        assert client.get(path, params={"offset": INT64_MAX}).status_code == 200
        response = client.get(path, params={"offset": INT64_MAX + 1})
        assert response.status_code == 422, path
        assert response.json()["detail"][0]["loc"] == ["query", "offset"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/sweeps", "/v1/studies", "/v1/aliases/x", "/v1/predict/pixels"])
def test_a_body_that_is_not_utf8_is_a_422_naming_the_byte(client: TestClient, path: str) -> None:
    method = "PUT" if path.startswith("/v1/aliases") else "POST"
    body = b'{"epochs": "\xff"}'
    response = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"][0] == "body"
    assert "UTF-8" in error["ctx"]["error"] or "unicode" in error["ctx"]["error"], error


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/v1/jobs", "GET, POST"),
        ("PUT", "/v1/models/abc", "DELETE, GET"),
        ("POST", "/v1/aliases/production", "DELETE, GET, PUT"),
    ],
)
def test_a_405_lists_every_method_the_path_serves(client: TestClient, method: str, path: str, allowed: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["detail"] == f"{method} is not allowed here; use {allowed}"
