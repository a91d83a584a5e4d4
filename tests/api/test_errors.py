"""Error answers that stay small and cannot fail (service/api/errors.py: the handlers and the
bounded tracebacks of service/logs.py): issue 11's examples and their neighbours, through TestClient and over
real HTTP."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.errors import INPUT_CHARS, MAX_ERRORS, TEXT_CHARS, bounded_text, echoed_input, public_errors
from service.logs import TRACEBACK_CHARS, bounded_traceback, log_handler
from service.settings import Settings
from service.store.db import Database
from tests.support.servers import free_port, wait_ready

TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 1, "seed": 1}
JSON = {"Content-Type": "application/json"}
# A JPEG's first bytes, then bytes that are not UTF-8: what curl -F 'file=<photo.jpg' puts in a text field.
PHOTO = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 1000  # 256 KB


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def app_routes_taking_json(settings: Settings) -> list[tuple[str, str]]:
    """(method, path) of every operation whose body is JSON, from the app's own document, path parameters filled."""
    app = create_app(settings)
    document = app.openapi()
    app.state.predictor.close()
    app.state.db.dispose()
    return [
        (method.upper(), path.replace("{name}", "fuzzed"))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


def assert_short_422(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text[:500]
    detail: list[dict[str, Any]] = response.json()["detail"]
    assert isinstance(detail, list) and detail
    for error in detail:
        assert {"loc", "msg", "type"} <= set(error), error
        echoed = error.get("input")
        assert len(echoed if isinstance(echoed, str) else json.dumps(echoed, separators=(",", ":"))) <= INPUT_CHARS
    return detail


# -- issue 11: nesting ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [400, 500, 900, 990, 1000, 1400, 30_000])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/jobs", '{{"hidden_layers": {}}}'),
        ("POST", "/v1/sweeps", '{{"base": {{"hidden_layers": {}}}, "grid": {{"lr": [0.1]}}}}'),
        ("POST", "/v1/sweeps", '{{"grid": {{"hidden_layers": [{}]}}}}'),
        ("PUT", "/v1/aliases/production", '{{"model_id": {}}}'),
        ("POST", "/v1/predict/pixels", '{{"images": {}}}'),
    ],
)
def test_deeply_nested_json_is_a_short_422_at_any_depth(
    client: TestClient, method: str, path: str, body: str, depth: int
) -> None:
    """500 to 900 deep was a 500 (the 422 handler recursed over the echoed input); 1,400 deep a bare 400."""
    response = client.request(method, path, content=body.format(nested(depth)), headers=JSON)
    detail = assert_short_422(response)
    assert len(response.content) < 2048
    if detail[0]["type"] == "json_invalid":  # too deep for the parser (Python's, or pydantic's for pixels): said so
        assert any(words in detail[0]["ctx"]["error"] for words in ("nested too deeply", "recursion limit"))
    else:
        assert detail[0]["loc"][0] == "body"


@pytest.mark.parametrize("depth", [1, 500, 900, 1400])
@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_a_deep_body_at_the_top_is_a_short_422_on_every_json_route(
    client: TestClient, settings: Settings, depth: int, opening: str
) -> None:
    closing = "]" if opening == "[" else "}"
    for method, path in app_routes_taking_json(settings):
        response = client.request(method, path, content=opening * depth + "1" + closing * depth, headers=JSON)
        assert_short_422(response)


def test_a_body_as_deep_as_the_default_limit_allows_is_a_short_422(client: TestClient, settings: Settings) -> None:
    """32 MB of brackets: the parser stops a thousand levels in, and the answer reads no further either."""
    depth = (settings.max_request_bytes - 100) // 2
    started = time.perf_counter()
    response = client.post("/v1/jobs", content=f'{{"hidden_layers": {nested(depth)}}}', headers=JSON)
    (error,) = assert_short_422(response)
    assert error["type"] == "json_invalid" and time.perf_counter() - started < 10


def test_the_deep_request_logs_nothing_large(client: TestClient) -> None:
    """The 500 wrote ~300 KB (the echoed input and a 3,000-frame traceback, twice) to the log."""
    stream = io.StringIO()
    root = logging.getLogger()
    root.addHandler(handler := log_handler("json", stream))
    try:
        for depth in (500, 900, 1400):
            body = f'{{"hidden_layers": {nested(depth)}}}'
            assert client.post("/v1/jobs", content=body, headers=JSON).status_code == 422
    finally:
        root.removeHandler(handler)
    assert len(stream.getvalue()) < 4096, stream.getvalue()[:2000]


# -- issue 11: what is echoed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc", "echoed"),
    [
        ('{"lr": NaN}', ["body", "lr"], "nan"),
        ('{"lr": -Infinity}', ["body", "lr"], "-inf"),
        ('{"lr": 1e400}', ["body", "lr"], "inf"),
        ('{"epochs": 1e400}', ["body", "epochs"], "inf"),
        ('{"epochs": ' + "9" * 4000 + "}", ["body", "epochs"], "9" * (INPUT_CHARS - 1) + "…"),
        ('{"activation": "\\ud800"}', ["body", "activation"], "\\ud800"),  # a lone surrogate: was a 500
        ('{"activation": "\\u0000"}', ["body", "activation"], "\x00"),
        ('{"hidden_layers": ["' + "x" * 100_000 + '"]}', ["body", "hidden_layers", 0], "x" * (INPUT_CHARS - 1) + "…"),
        ('{"hidden_layers": [[]]}', ["body", "hidden_layers", 0], []),
        ('{"seed": {"a": [1, 2.5, null, true]}}', ["body", "seed"], {"a": [1, 2.5, None, True]}),
    ],
)
def test_an_echoed_input_is_the_value_or_its_first_200_characters(
    client: TestClient, body: str, loc: list[Any], echoed: object
) -> None:
    (error, *_) = assert_short_422(client.post("/v1/jobs", content=body, headers=JSON))
    assert (error["loc"], error["input"]) == (loc, echoed)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"epochs": ' + "9" * 5000 + "}", "thousands of digits"),  # past Python's 4300-digit limit: was a 400
        ('{"epochs": 1', "Expecting"),  # FastAPI's own invalid-JSON error, kept
        (b'{"epochs": "\xff"}', "not UTF-8"),
    ],
)
def test_a_body_python_cannot_parse_is_a_json_invalid_422(client: TestClient, body: str | bytes, reason: str) -> None:
    (error,) = assert_short_422(client.post("/v1/jobs", content=body, headers=JSON))
    assert error["type"] == "json_invalid" and reason in error["ctx"]["error"], error


def test_keys_and_messages_that_quote_the_request_are_cut(client: TestClient) -> None:
    long_key = "k" * 100_000
    (extra,) = assert_short_422(client.post("/v1/jobs", json={long_key: 1}))
    assert extra["loc"] == ["body", "k" * (INPUT_CHARS - 1) + "…"]
    (grid,) = assert_short_422(client.post("/v1/sweeps", json={"grid": {long_key: [1]}}))
    assert len(grid["loc"][-1]) == INPUT_CHARS and len(grid["msg"]) <= TEXT_CHARS
    # A lone surrogate in a key: pydantic refuses it, or the sweep's check quotes it (in `loc` and `msg`).
    (key,) = assert_short_422(client.post("/v1/jobs", content='{"\\udc00": 1}', headers=JSON))
    assert (key["type"], key["input"]) == ("string_unicode", "\\udc00")
    (field,) = assert_short_422(client.post("/v1/sweeps", content='{"grid": {"\\udc00": [1]}}', headers=JSON))
    assert field["loc"] == ["body", "grid", "\\udc00"] and "'\\udc00' is not a spec field" in field["msg"]


def test_a_thousand_errors_are_fifty_and_a_count(client: TestClient) -> None:
    """A 1 MB body of wrong pixels made 200,000 errors: a 29 MB answer, 15 s to write."""
    body = json.dumps({"images": [[["x"] * 28] * 28] * 256})
    response = client.post("/v1/predict/pixels", content=body, headers=JSON)
    detail = assert_short_422(response)
    assert len(detail) == MAX_ERRORS + 1 and len(response.content) < 20_000
    assert detail[-1]["type"] == "too_many_errors" and detail[-1]["loc"] == ["body"]
    assert detail[-1]["msg"].startswith(f"{256 * 28 * 28 - MAX_ERRORS} more errors")


def test_a_long_path_in_a_domain_error_is_cut(client: TestClient) -> None:
    response = client.get("/v1/jobs/" + "j" * 5000)
    assert response.status_code == 404 and len(response.json()["detail"]) <= 1000


# -- issue 11: wrong encodings --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["file", "files"])
@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
def test_an_image_sent_as_a_text_field_is_a_short_422_saying_to_send_a_file_part(
    client: TestClient, name: str, encoding: str
) -> None:
    """curl -F 'file=<photo.jpg' answered a 251 KB 422: the JPEG echoed back as mojibake."""
    text = PHOTO.decode("latin-1")
    if encoding == "multipart":  # a part without a filename, as curl -F 'file=<...' sends it
        response = client.post("/v1/predict", files={name: (None, PHOTO)})
    else:
        response = client.post("/v1/predict", data={name: text})
    (error,) = assert_short_422(response)
    assert len(response.content) < 300, response.text[:500]
    assert error["type"] == "file_expected" and error["loc"][:2] == ["body", name] and "input" not in error
    assert f"-F {name}=@" in error["msg"] and "file part" in error["msg"]


def test_a_text_field_over_the_form_limit_gets_the_same_hint(client: TestClient) -> None:
    """Past Starlette's 1 MB for a text field the form does not parse: a 400, which says what to send."""
    response = client.post("/v1/predict", files={"file": (None, PHOTO * 5)})
    assert response.status_code == 400
    assert "maximum size" in response.json()["detail"] and "-F file=@photo.png" in response.json()["detail"]


def test_a_real_file_part_still_works_beside_the_hint(client: TestClient) -> None:
    """An upload that is a file but not an image is the image decoder's 4xx, not the text-field hint."""
    response = client.post("/v1/predict", files={"file": ("photo.jpg", PHOTO, "image/jpeg")})
    assert 400 <= response.status_code < 500 and "text field" not in response.text


@pytest.mark.parametrize(
    "content_type", [None, "application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
def test_json_sent_as_anything_else_is_a_415_saying_to_send_json(
    client: TestClient, settings: Settings, content_type: str | None
) -> None:
    """curl -d '{"epochs":1}' (a form) answered a 422 echoing the body as a string, with nothing about why."""
    headers = {"Content-Type": content_type} if content_type else {}
    for method, path in app_routes_taking_json(settings):
        if path == "/v1/predict/pixels":
            continue  # reads any body as JSON, whatever its Content-Type
        response = client.request(method, path, content=b'{"epochs":1}', headers=headers)
        assert response.status_code == 415, (path, response.text)
        detail = response.json()["detail"]
        assert "Content-Type: application/json" in detail and (content_type or "no Content-Type") in detail


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "application/x+json"])
def test_json_under_any_json_media_type_is_accepted(client: TestClient, content_type: str) -> None:
    response = client.post("/v1/jobs", content=json.dumps(TINY), headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text


def test_the_document_lists_the_415_of_every_json_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "ErrorPublic" in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                assert "415" in operation["responses"], (method, path)


# -- the echo itself ------------------------------------------------------------------------------


class Opaque:
    """Something a validator might get that is not JSON (an upload, say)."""


@pytest.mark.parametrize(
    ("value", "echoed"),
    [
        (None, None),
        ({"a": [1, 2.5, None, True, "é"]}, {"a": [1, 2.5, None, True, "é"]}),
        ((1, 2), [1, 2]),
        (float("nan"), "nan"),
        ([float("inf"), float("-inf")], ["inf", "-inf"]),
        ("\ud800x", "\\ud800x"),
        ({"\udc80": 1}, {"\\udc80": 1}),
        (b"\xff\xd8abc", "\\xff\\xd8abc"),
        (ValueError("bad value"), "bad value"),
        (Opaque(), "<Opaque>"),
        ("x" * 1000, "x" * (INPUT_CHARS - 1) + "…"),
        pytest.param(10**5000, "<16610-bit integer>", id="past-str-digits"),
        (10**300, str(10**300)[: INPUT_CHARS - 1] + "…"),
        ([[[[[]]]]], [[[[[]]]]]),
    ],
)
def test_echoed_input_is_json_and_bounded(value: object, echoed: object) -> None:
    assert echoed_input(value) == echoed


def test_echoed_input_reads_a_million_levels_without_recursing() -> None:
    deep: list[Any] = []
    for _ in range(1_000_000):
        deep = [deep]
    wide = {str(index): [index] * 100 for index in range(100_000)}
    started = time.perf_counter()
    assert echoed_input(deep) == "[" * (INPUT_CHARS - 1) + "…"
    assert isinstance(cut := echoed_input(wide), str) and len(cut) == INPUT_CHARS and cut.startswith('{"0":[0,0')
    assert time.perf_counter() - started < 0.1


def test_a_cycle_ends_at_the_bound() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert echoed_input(loop) == "[" * (INPUT_CHARS - 1) + "…"


def test_bounded_text_cuts_and_makes_surrogates_encodable() -> None:
    assert bounded_text("short") == "short"
    assert bounded_text("y" * 600) == "y" * (TEXT_CHARS - 1) + "…"
    bounded_text("\ud800" * 10).encode("utf-8")  # raises if a surrogate were left


def test_public_errors_keep_fastapis_keys_and_bound_each() -> None:
    errors = [{"type": "t", "loc": ("body", "k" * 300, 3), "msg": "m" * 900, "input": "i" * 900, "ctx": {"e": 1}}]
    (public,) = public_errors(errors)
    assert set(public) == {"type", "loc", "msg", "input", "ctx"}
    assert public["loc"] == ["body", "k" * (INPUT_CHARS - 1) + "…", 3]
    assert len(str(public["msg"])) == TEXT_CHARS and len(str(public["input"])) == INPUT_CHARS
    assert public["ctx"] == {"e": 1}


# -- the 500 and its log --------------------------------------------------------------------------


def broken_app(settings: Settings) -> FastAPI:
    """The app with a route that fails as issue 11's did: a recursion thousands of frames deep, then an error
    whose message quotes a large request."""
    app = create_app(settings)

    def recurse(depth: int) -> int:
        return recurse(depth + 1) + 1

    async def broken() -> None:
        try:
            recurse(0)
        except RecursionError as exc:
            raise ValueError("while reading " + "x" * 300_000) from exc

    app.add_api_route("/broken", broken)
    return app


def error_records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, stream.getvalue().splitlines()) if r["level"] in {"ERROR", "CRITICAL"}]


def test_a_500_is_logged_once_bounded_without_the_body(settings: Settings, db: Database) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    root.addHandler(handler := log_handler("json", stream))
    try:
        with TestClient(broken_app(settings), raise_server_exceptions=False) as client:
            response = client.request("GET", "/broken", headers={"X-Request-ID": "req-deep"}, content=b"secret" * 1000)
    finally:
        root.removeHandler(handler)
    assert response.status_code == 500 and response.json() == {
        "detail": "internal error; the server log has the details",
        "code": "internal_error",
    }
    assert response.headers["x-request-id"] == "req-deep"
    (record,) = error_records(stream)
    assert (record["message"], record["method"], record["path"], record["request_id"]) == (
        "unhandled error",
        "GET",
        "/broken",
        "req-deep",
    )
    line = json.dumps(record)
    assert len(line) < TRACEBACK_CHARS + 1000 and "secret" not in line
    assert "frames omitted" in record["exc_info"] and "RecursionError" in record["exc_info"]
    assert "characters omitted" in record["exc_info"] and "ValueError: while reading xxx" in record["exc_info"]


@pytest.mark.timeout(60)
def test_a_500_over_http_is_one_bounded_log_line(settings: Settings, db: Database) -> None:
    """Under uvicorn, Starlette raised the exception again after the 500 and uvicorn logged it a second time."""
    port = free_port()
    stream = io.StringIO()
    root = logging.getLogger()
    root.addHandler(handler := log_handler("json", stream))
    server = uvicorn.Server(uvicorn.Config(broken_app(settings), port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        response = httpx.get(f"http://127.0.0.1:{port}/broken", headers={"X-Request-ID": "req-http"}, timeout=30)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        root.removeHandler(handler)
    assert response.status_code == 500 and response.headers["x-request-id"] == "req-http"
    (record,) = error_records(stream)
    assert record["logger"] == "service.api.errors" and record["request_id"] == "req-http"
    assert len(json.dumps(record)) < TRACEBACK_CHARS + 1000


# -- bounded tracebacks ---------------------------------------------------------------------------


def exc_info_of(action: Any) -> Any:
    try:
        action()
    except BaseException:
        return sys.exc_info()
    raise AssertionError("no exception")


def test_a_short_traceback_is_logged_whole() -> None:
    def fail() -> None:
        raise KeyError("k")

    text = bounded_traceback(exc_info_of(fail))
    assert text.startswith("Traceback (most recent call last):") and text.endswith("KeyError: 'k'")
    assert "omitted" not in text


def test_a_deep_chained_traceback_keeps_both_ends_of_each_exception() -> None:
    def a(n: int) -> int:
        return b(n) + 1

    def b(n: int) -> int:
        return a(n) + 1

    def fail() -> None:
        try:
            a(0)
        except RecursionError as exc:
            raise RuntimeError("m" * 50_000) from exc

    text = bounded_traceback(exc_info_of(fail))
    assert len(text) <= TRACEBACK_CHARS
    assert text.count("frames omitted") == 1 and "RecursionError: maximum recursion depth exceeded" in text
    assert "direct cause" in text and text.endswith("m" * 100)


def test_an_exception_group_is_bounded_too() -> None:
    def deep(n: int) -> None:
        deep(n + 1)

    def fail() -> None:
        errors = [exc_info_of(lambda: deep(0))[1] for _ in range(20)]
        raise ExceptionGroup("many", errors)

    text = bounded_traceback(exc_info_of(fail))
    assert len(text) <= TRACEBACK_CHARS and "characters omitted" in text


def test_exc_info_outside_an_exception() -> None:
    assert bounded_traceback((None, None, None)) == "NoneType: None"


def test_text_logs_bound_tracebacks_too() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.bounded_text")
    logger.addHandler(log_handler("text", stream))
    logger.propagate = False
    try:
        try:
            raise ValueError("v" * 100_000)
        except ValueError:
            logger.exception("failed")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert len(stream.getvalue()) < 2000 and "characters omitted" in stream.getvalue()


# -- end to end: issue 11's requests at a real `fmnist serve` -------------------------------------


@pytest.mark.timeout(90)
def test_issue_11_examples_over_http_answer_4xx_and_log_little(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "api.log"
    env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(settings.data_dir)}
    env.pop("FMNIST_LOG_FORMAT", None)
    if settings.database_url:
        env["FMNIST_DATABASE_URL"] = settings.database_url
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-format", "json"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            wait_ready(http, process)
            size_before = log_path.stat().st_size
            answers = [
                http.post("/v1/jobs", content=f'{{"hidden_layers": {nested(700)}}}', headers=JSON),
                http.post("/v1/sweeps", content=f'{{"base": {{"hidden_layers": {nested(700)}}}}}', headers=JSON),
                http.put("/v1/aliases/production", content=f'{{"model_id": {nested(700)}}}', headers=JSON),
                http.post("/v1/jobs", content=f'{{"hidden_layers": {nested(1400)}}}', headers=JSON),
                http.post("/v1/predict", files={"file": (None, PHOTO)}),
                http.post(
                    "/v1/jobs", content=b'{"epochs":1}', headers={"Content-Type": "application/x-www-form-urlencoded"}
                ),
            ]
            logged = log_path.stat().st_size - size_before
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    assert [answer.status_code for answer in answers] == [422, 422, 422, 422, 422, 415]
    assert max(len(answer.content) for answer in answers) < 1024
    # Six access lines, nothing else.
    assert logged < 6 * 600, log_path.read_text()[-3000:]
