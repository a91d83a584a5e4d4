"""Property tests: whatever a client sends within the body limit, every route answers a bounded 4xx JSON error
(or succeeds), never a 5xx.

Bodies are JSON *text*, written here rather than by ``json.dumps``: values nested up to the body limit, every
kind of string escape (lone surrogates, NUL, ``\\/``), numbers with thousands of digits, ``NaN`` and
``Infinity``, keys the schemas use and keys they do not, under every Content-Type a client might send. Path,
query and header values are arbitrary text, percent-encoded (not always as valid UTF-8). Text fields go to
the multipart route where files belong.

Why the schemathesis run (test_fuzz_api.py) found none of the 500s of issue 11: it draws bodies from the
OpenAPI schemas and serialises them with ``json.dumps``, so every body is valid JSON of the documented
Content-Type; its free-form values are a few leaves deep (``max_leaves`` 2 to 5), its floats finite, its
text free of surrogates (``codec="utf-8"``) and its file fields always file parts. A 500-deep array, an
``"\\ud800"`` escape or a JPEG in a text field cannot come out of it. These tests produce them, on routes
listed from the app's own OpenAPI document (a new route is fuzzed without touching this file).

The app runs in-process on a real database (SQLite, or PostgreSQL in the ``-m db`` pass), with one tiny
trained model, aliased, whose ids the strategies sometimes use so that success paths run too. The body limit
is set to 64 KiB so that "up to the limit" is cheap to reach. Derandomized: the same cases every run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.app import create_app
from service.api.errors import INPUT_CHARS, TEXT_CHARS
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker
from tests.conftest import ON_POSTGRES
from tests.support.postgres import MigratedDatabase
from tests.support.servers import openapi_document

pytestmark = pytest.mark.db

BODY_LIMIT = 64 * 1024
TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 1, "seed": 1}
# No error answer needs more: MAX_ERRORS entries of bounded texts.
ANSWER_BYTES = 64 * 1024
FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


DOCUMENT = openapi_document()
OPERATIONS = [
    (method.upper(), path, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if method in {"get", "post", "put", "delete", "patch"}
]
JSON_OPERATIONS = [op for op in OPERATIONS if "application/json" in op[2].get("requestBody", {}).get("content", {})]
# Those that take a path, query or header parameter (the others have no input but their body).
PARAMETERIZED_OPERATIONS = [op for op in OPERATIONS if op[2].get("parameters")]
FORM_OPERATIONS = [op for op in OPERATIONS if "multipart/form-data" in op[2].get("requestBody", {}).get("content", {})]


def _property_names(document: dict[str, Any]) -> set[str]:
    """Every property name of every schema in the document, inline ones (pixels' body) included."""
    names: set[str] = set()
    pending: list[object] = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                names |= set(node["properties"])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return names


# Bodies use the document's names (properties and parameters), so generated values reach the fields' validators.
KEYS = sorted(
    _property_names(DOCUMENT)
    | {parameter["name"] for _, _, operation in OPERATIONS for parameter in operation.get("parameters", [])}
)


def test_the_routes_to_fuzz_are_found() -> None:
    """A guard on the listing itself: these routes take JSON, and the multipart one takes files."""
    assert {(method, path) for method, path, _ in JSON_OPERATIONS} >= {
        ("POST", "/v1/jobs"),
        ("POST", "/v1/sweeps"),
        ("PUT", "/v1/aliases/{name}"),
        ("POST", "/v1/predict/pixels"),
    }
    assert [(method, path) for method, path, _ in FORM_OPERATIONS] == [("POST", "/v1/predict")]
    assert {"hidden_layers", "grid", "base", "model_id", "images"} <= set(KEYS)


# -- JSON text --------------------------------------------------------------------------------------

SHORT_ESCAPES = ['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]
# Raw characters a JSON string may hold: anything but the quote, the backslash and control characters.
RAW_CHARACTERS = st.characters(exclude_categories=["Cs", "Cc"], exclude_characters='"\\')
STRING_PIECE = st.one_of(
    RAW_CHARACTERS,
    st.sampled_from(SHORT_ESCAPES),
    st.integers(0, 0xFFFF).map(lambda code: f"\\u{code:04x}"),  # lone surrogates and NUL included
    st.sampled_from(["\\ud83d\\ude00", "\\udbff\\udfff", "\\u0000", "\\ud800", "\\udfff"]),
)
NUMBER = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "1e400", "-1e400", "1e-400", "0.0", "1E+2", "-0.0e-0"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(1, 6000).map(lambda digits: "9" * digits),  # past Python's 4300-digit limit too
)


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"


def _nest(inner: str, depth: int, key: str | None) -> str:
    return "[" * depth + inner + "]" * depth if key is None else f"{{{key}:" * depth + inner + "}" * depth


@functools.cache
def bodies(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    """JSON texts; ``known`` are strings the served app knows (ids, aliases), so that some requests succeed."""
    string = st.one_of(
        st.lists(STRING_PIECE, max_size=20).map(lambda pieces: '"' + "".join(pieces) + '"'),
        st.sampled_from([*KEYS, *known]).map(json.dumps),
        st.integers(INPUT_CHARS, BODY_LIMIT // 2).map(lambda size: json.dumps("x" * size)),
    )
    key = st.one_of(st.sampled_from(KEYS).map(json.dumps), string)
    value = st.recursive(
        st.one_of(st.sampled_from(["null", "true", "false"]), NUMBER, string),
        lambda children: st.one_of(
            st.lists(children, max_size=5).map(_array), st.lists(st.tuples(key, children), max_size=5).map(_object)
        ),
        max_leaves=12,
    )
    # As deep as the body limit allows, and often around where Python's parser gives up (a thousand levels).
    depth = st.one_of(st.integers(0, 1500), st.integers(0, BODY_LIMIT // 2))
    nested = st.builds(_nest, value, depth, st.none() | key)
    return st.one_of(
        value,
        nested,
        # An object with the schemas' keys: the values reach the fields' own validators.
        st.lists(st.tuples(key, value | nested), min_size=1, max_size=6).map(_object),
    )


CONTENT_TYPE = st.one_of(
    st.just("application/json"),
    st.sampled_from(
        [
            "application/json; charset=utf-8",
            "application/merge-patch+json",
            None,
            "application/x-www-form-urlencoded",
            "text/plain",
            "multipart/form-data",
            "application/octet-stream",
        ]
    ),
)
PARAMETER_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.text(st.characters(), max_size=30),  # lone surrogates: percent-encoded, they are invalid UTF-8
    st.integers(INPUT_CHARS, 4000).map(lambda size: "9" * size),
    st.sampled_from(["0", "-1", str(2**63), str(2**64), "1e400", "NaN", "\x00", "a\x00b", "%", "..", "/"]),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)


# -- the served app ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    client: TestClient
    ids: dict[str, str]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Served]:
    database_url = None
    if ON_POSTGRES:
        migrated: MigratedDatabase = request.getfixturevalue("migrated_postgres")
        migrated.reset()
        database_url = migrated.url
    app_settings = Settings(
        home=tmp_path_factory.mktemp("fuzz-json") / "home",
        database_url=database_url,
        data_dir=synthetic_data_dir,
        lease_seconds=5,
        poll_seconds=0.05,
        max_request_bytes=BODY_LIMIT,
        max_upload_bytes=4096,
    )
    migrations.upgrade(app_settings.sqlalchemy_url)
    db = Database(app_settings.sqlalchemy_url)
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json=TINY).json()
        worker = Worker(app_settings, db, torch.device("cpu"), burst=True)
        try:
            assert worker.run_once()
        finally:
            worker.close()
        model_id = client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
        assert client.put("/v1/aliases/production", json={"model_id": model_id}).status_code == 201
        ids = {"job": job["id"], "model": model_id, "alias": "production"}
        yield Served(client, ids)
    db.dispose()


def assert_bounded_4xx_or_success(response: httpx.Response, sent: str) -> None:
    """Not a 5xx; a JSON answer for every error; any echoed input and text bounded; the whole answer too."""
    where = f"{response.request.method} {response.request.url.path} {sent[:300]!r}"
    assert response.status_code < 500, (where, response.text[:2000])
    if response.status_code < 400:
        return
    if response.status_code == 413 and response.headers["content-type"].startswith("text/plain"):
        # Starlette's own answer when Content-Length alone is over the limit (sent outside the app's handlers).
        assert response.text == "Content Too Large", where
        return
    assert len(response.content) <= ANSWER_BYTES, (where, len(response.content))
    detail = response.json()["detail"]
    if isinstance(detail, str):
        assert detail, where
        return
    for error in detail:
        assert {"loc", "msg", "type"} <= set(error), (where, error)
        assert len(error["msg"]) <= TEXT_CHARS, (where, error)
        echoed = error.get("input")
        size = len(echoed) if isinstance(echoed, str) else len(json.dumps(echoed, separators=(",", ":")))
        assert size <= INPUT_CHARS, (where, error)


def _path(template: str, operation: dict[str, Any], values: dict[str, str]) -> str:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            raw = values[parameter["name"]]
            template = template.replace("{" + parameter["name"] + "}", quote(raw.encode("utf-8", "surrogatepass"), ""))
    return template


def _streams(operation: dict[str, Any]) -> bool:
    return "text/event-stream" in operation["responses"].get("200", {}).get("content", {})


# -- the properties ---------------------------------------------------------------------------------


def _op_id(value: object) -> str:
    return value if isinstance(value, str) else ""


def _path_values(data: st.DataObject, operation: dict[str, Any], known: list[str]) -> dict[str, str]:
    # Known ids one time in four, so that success paths run too; never into an event stream, which stays open.
    if known and not _streams(operation):
        choices = st.integers(0, 3).flatmap(lambda n: st.sampled_from(known) if n == 0 else PARAMETER_TEXT)
    else:
        choices = PARAMETER_TEXT
    return {p["name"]: data.draw(choices) for p in operation.get("parameters", []) if p["in"] == "path"}


@pytest.mark.parametrize(("method", "path", "operation"), JSON_OPERATIONS, ids=_op_id)
@FUZZ
@given(data=st.data())
def test_any_json_body_gets_a_bounded_4xx_never_a_5xx(
    served: Served, method: str, path: str, operation: dict[str, Any], data: st.DataObject
) -> None:
    known = sorted(served.ids.values())
    body = data.draw(bodies(tuple(known)), label="body")
    content_type = data.draw(CONTENT_TYPE, label="content_type")
    headers = {"Content-Type": content_type} if content_type else {}
    url = _path(path, operation, _path_values(data, operation, known))
    encoded = body.encode()
    response = served.client.request(method, url, content=encoded, headers=headers)
    assert_bounded_4xx_or_success(response, body)
    # The app's limit: FMNIST_MAX_REQUEST_BYTES, or one upload of FMNIST_MAX_UPLOAD_BYTES with its framing if more.
    if len(encoded) > served.client.app.max_body_size:
        assert response.status_code == 413
    if response.status_code == 415 and path != "/v1/predict/pixels":
        assert "Content-Type: application/json" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "operation"), PARAMETERIZED_OPERATIONS, ids=_op_id)
@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_any_path_query_or_header_value_gets_a_bounded_4xx_never_a_5xx(
    served: Served, method: str, path: str, operation: dict[str, Any], data: st.DataObject
) -> None:
    # Unknown ids only: with a known one, a valid query runs the route's success path (an ONNX export, a plot),
    # slow and no part of this property; an invalid value is refused before the route runs either way.
    url = _path(path, operation, _path_values(data, operation, []))
    names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    query = data.draw(st.lists(st.tuples(st.sampled_from([*names, "unknown"]), PARAMETER_TEXT), max_size=4))
    if query:
        url += "?" + "&".join(
            f"{quote(name)}={quote(value.encode('utf-8', 'surrogatepass'), '')}" for name, value in query
        )
    header_names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]
    headers = {name: data.draw(HEADER_TEXT) for name in header_names if data.draw(st.booleans())}
    response = served.client.request(method, url, headers=headers)
    assert_bounded_4xx_or_success(response, url)


TEXT_FIELDS = st.lists(
    st.tuples(
        st.sampled_from(["file", "files", "other"]),
        # Short texts, and long ones such as a JPEG's bytes read as Latin-1 (curl -F 'file=<photo.jpg').
        st.text(max_size=50) | st.integers(INPUT_CHARS, BODY_LIMIT).map(lambda size: "\xff\xd8\xff\xe0" * (size // 4)),
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.parametrize(("method", "path", "operation"), FORM_OPERATIONS, ids=_op_id)
@settings(FUZZ, max_examples=40)
@given(fields=TEXT_FIELDS, multipart=st.booleans())
def test_text_fields_where_files_belong_get_a_short_4xx(
    served: Served, method: str, path: str, operation: dict[str, Any], fields: list[tuple[str, str]], multipart: bool
) -> None:
    if multipart:  # as curl -F sends them: parts without a filename
        response = served.client.request(method, path, files=[(name, (None, value)) for name, value in fields])
    else:  # as curl -d sends them
        response = served.client.request(
            method, path, data={name: [v for n, v in fields if n == name] for name, _ in fields}
        )
    assert_bounded_4xx_or_success(response, repr(fields)[:300])
    assert 400 <= response.status_code < 500
    assert len(response.content) < 1024, response.text[:500]
    # FastAPI reads an empty form field as absent: then the answer is that no image came.
    if response.status_code == 422 and any(name in {"file", "files"} and value for name, value in fields):
        assert "as a file part" in response.text, response.text
