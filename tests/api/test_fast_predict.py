"""The dedicated path for POST /v1/predict (service/api/fast_predict.py): its multipart and query parsing
against Starlette's and FastAPI's, and every answer it gives against the FastAPI route's for the same request
(FMNIST_PREDICT_FAST_PATH=false serves the same app without it)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from models.spec import TrainingSpec
from service.api import auth
from service.api.app import ServiceApp, create_app
from service.api.fast_predict import parse_multipart, parse_query
from service.jobs import queue
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker

BOUNDARY = "b0undary"


def png(seed: int, size: int = 28) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png(seed))).save(buffer, format="JPEG")
    return buffer.getvalue()


def multipart(parts: list[tuple[bytes, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A body from (Content-Disposition value, content) pairs."""
    chunks = [
        b"--%s\r\nContent-Disposition: %s\r\nContent-Type: image/png\r\n\r\n%s\r\n" % (boundary.encode(), d, c)
        for d, c in parts
    ]
    return b"".join(chunks) + b"--%s--\r\n" % boundary.encode()


# -- parsing, against Starlette's parser -----------------------------------------------------------------
async def _starlette_parts(body: bytes, boundary: bytes) -> list[tuple[str, str | None, bytes]] | None:
    async def stream() -> Any:
        yield body

    headers = Headers({"content-type": f"multipart/form-data; boundary={boundary.decode('latin-1')}"})
    try:
        form = await MultiPartParser(headers, stream()).parse()
    except MultiPartException:
        return None
    parts: list[tuple[str, str | None, bytes]] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            parts.append((name, value.filename, await value.read()))
        else:
            parts.append((name, None, value.encode()))
    await form.close()
    return parts


def _agrees_with_starlette(body: bytes, boundary: bytes) -> None:
    import asyncio

    mine = parse_multipart(body, boundary)
    if mine is None:  # left to Starlette: nothing to compare
        return
    theirs = asyncio.run(_starlette_parts(body, boundary))
    assert theirs is not None, "the fast path read a body Starlette refuses"
    # Starlette reads a field without a filename as text (decoded): compare files only, and the order of all.
    assert [(n, f) for n, f, _ in mine] == [(n, f) for n, f, _ in theirs]
    assert [c for _, f, c in mine if f is not None] == [c for _, f, c in theirs if f is not None]


NAMES = st.sampled_from(["file", "files", "other", "fïle", "a;b", 'q"uote', "back\\slash", "", "x y"])
FILENAMES = st.one_of(
    st.none(), st.sampled_from(["0.png", "", "shoe photo.jpg", "ünï.png", "C:\\dir\\a.png", 'a"b.png', "a;b.png"])
)


@st.composite
def dispositions(draw: st.DrawFn) -> bytes:
    name, filename = draw(NAMES), draw(FILENAMES)
    quote = draw(st.sampled_from(['"', ""]))
    value = f"form-data; name={quote}{name}{quote}"
    if filename is not None:
        value += f"; filename={quote}{filename}{quote}"
    return value.encode()


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.tuples(dispositions(), st.binary(max_size=40)), min_size=1, max_size=4),
    cut=st.integers(min_value=0, max_value=400),
    mangle=st.sampled_from(["none", "truncate", "preamble", "epilogue", "no-final-crlf", "lf-only"]),
)
def test_what_the_fast_parser_reads_starlette_reads_the_same(
    parts: list[tuple[bytes, bytes]], cut: int, mangle: str
) -> None:
    body = multipart(parts)
    if mangle == "truncate":
        body = body[: cut % max(1, len(body))]
    elif mangle == "preamble":
        body = b"some preamble\r\n" + body
    elif mangle == "epilogue":
        body += b"trailing epilogue"
    elif mangle == "no-final-crlf":
        body = body.removesuffix(b"\r\n")
    elif mangle == "lf-only":
        body = body.replace(b"\r\n", b"\n")
    _agrees_with_starlette(body, BOUNDARY.encode())


def test_the_fast_parser_reads_what_clients_send() -> None:
    body = multipart(
        [(b'form-data; name="file"; filename="a.png"', b"PNG1"), (b'form-data; name="files"; filename="b.png"', b"")]
    )
    assert parse_multipart(body, BOUNDARY.encode()) == [("file", "a.png", b"PNG1"), ("files", "b.png", b"")]
    # A boundary inside a part's content, without the CRLF before it, is content.
    tricky = multipart([(b'form-data; name="file"; filename="a.png"', b"x--" + BOUNDARY.encode() + b"y")])
    assert parse_multipart(tricky, BOUNDARY.encode()) == [("file", "a.png", b"x--b0undaryy")]
    _agrees_with_starlette(tricky, BOUNDARY.encode())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", (None, 3)),
        (b"top_k=5", (None, 5)),
        (b"top_k=10&model=production", ("production", 10)),
        (b"model=", ("", 3)),
        (b"model=%70roduction", ("production", 3)),
        (b"unrelated=1", (None, 3)),
        (b"top_k=0", None),
        (b"top_k=11", None),
        (b"top_k=05", (None, 5)),
        (b"top_k=+5", None),
        (b"top_k=5.0", None),
        (b"top_k=", None),
        (b"top_k=3&top_k=4", None),
        (b"model=a&model=b", None),
        (b"model=" + b"m" * 65, None),
    ],
)
def test_the_query_is_read_as_the_route_reads_it_or_left_to_the_route(
    query: bytes, expected: tuple[str | None, int] | None
) -> None:
    assert parse_query(query) == expected


# -- answers, against the route's ----------------------------------------------------------------------------
@dataclass
class Apps:
    fast: TestClient
    route: TestClient
    app: ServiceApp
    fallbacks: list[str]  # the paths the fast path handed on, since the last clear


def _served(home: Path, data_dir: Path, **overrides: Any) -> Iterator[Apps]:
    settings = Settings(home=home, data_dir=data_dir, max_upload_bytes=4096, max_predict_files=4, **overrides)
    migrations.upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    queue.enqueue_job(db, TrainingSpec(hidden_layers=[16], batch_size=64, epochs=1, seed=1), max_attempts=1)
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    fast_app = create_app(settings)
    route_app = create_app(settings.model_copy(update={"predict_fast_path": False}))
    assert fast_app.fast_predict is not None and route_app.fast_predict is None
    fallbacks: list[str] = []
    handed_on = fast_app.fast_predict.fallback

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        fallbacks.append(scope["path"])
        await handed_on(scope, receive, send)

    fast_app.fast_predict.fallback = counted
    with (
        TestClient(fast_app, raise_server_exceptions=False) as fast,
        TestClient(route_app, raise_server_exceptions=False) as route,
    ):
        yield Apps(fast, route, fast_app, fallbacks)
    db.dispose()


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Apps]:
    yield from _served(tmp_path_factory.mktemp("fast") / "home", synthetic_data_dir)


def _files(*items: tuple[str, str, bytes]) -> Callable[..., Any]:
    def send(client: TestClient, query: str = "") -> Any:
        return client.post(f"/v1/predict{query}", files=[(f, (n, c, "image/png")) for f, n, c in items])

    return send


FAST_CASES: dict[str, tuple[Callable[..., Any], str]] = {
    "one file": (_files(("file", "a.png", png(1))), ""),
    "top_k and model": (_files(("file", "a.png", png(1))), "?top_k=5&model=production"),
    "no such model": (_files(("file", "a.png", png(1))), "?model=nope"),
    "files, one corrupt": (
        _files(("files", "a.png", png(2)), ("files", "b.png", b"\x89PNG broken"), ("files", "c.png", png(3))),
        "",
    ),
    "file and files": (_files(("file", "a.png", png(4)), ("files", "b.png", png(5))), ""),
    "an empty file": (_files(("file", "a.png", b"")), ""),
    "all unusable": (_files(("files", "a.png", b"text"), ("files", "b.png", b"")), ""),
    "a file over the upload limit": (_files(("files", "big.png", png(6, size=200)), ("files", "b.png", png(7))), ""),
    "too many files": (_files(*[("files", f"{i}.png", png(i)) for i in range(5)]), ""),
    "a unicode filename": (_files(("file", "chaussure é.png", png(8))), ""),
    "a JPEG": (_files(("file", "a.jpg", jpeg(9))), ""),
}
ROUTE_CASES: dict[str, tuple[Callable[..., Any], str]] = {
    "top_k out of range": (_files(("file", "a.png", png(1))), "?top_k=0"),
    "top_k not a number": (_files(("file", "a.png", png(1))), "?top_k=three"),
    "two `file` fields": (_files(("file", "a.png", png(1)), ("file", "b.png", png(2))), ""),
    "an unknown field": (_files(("photo", "a.png", png(1))), ""),
    "a model name too long": (_files(("file", "a.png", png(1))), "?model=" + "m" * 65),
    "`file` sent as text": (lambda client, query="": client.post("/v1/predict", data={"file": "not a file"}), ""),
    "no body": (lambda client, query="": client.post("/v1/predict"), ""),
    "JSON": (lambda client, query="": client.post("/v1/predict", json={"file": "x"}), ""),
    "malformed multipart": (
        lambda client, query="": client.post(
            "/v1/predict", content=b"--x\r\nnot headers", headers={"content-type": "multipart/form-data; boundary=x"}
        ),
        "",
    ),
}


def _same(fast: Any, route: Any) -> None:
    assert fast.status_code == route.status_code, (fast.text, route.text)
    assert fast.headers["content-type"] == route.headers["content-type"]
    assert fast.json() == route.json()
    assert "x-request-id" in fast.headers


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_the_fast_path_answers_as_the_route_does(apps: Apps, case: str) -> None:
    send, query = FAST_CASES[case]
    apps.fallbacks.clear()
    fast = send(apps.fast, query)
    assert apps.fallbacks == []  # answered on the fast path
    _same(fast, send(apps.route, query))


@pytest.mark.parametrize("case", list(ROUTE_CASES))
def test_what_the_fast_path_does_not_read_the_route_answers(apps: Apps, case: str) -> None:
    send, query = ROUTE_CASES[case]
    apps.fallbacks.clear()
    fast = send(apps.fast, query)
    assert apps.fallbacks == ["/v1/predict"]
    _same(fast, send(apps.route, query))


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "IMAGE/PNG; q=1"])
def test_a_raw_image_body_is_answered_as_the_same_image_uploaded_as_a_file(apps: Apps, content_type: str) -> None:
    image = jpeg(11) if "jpeg" in content_type else png(11)
    for client in (apps.fast, apps.route):
        raw = client.post("/v1/predict?top_k=2", content=image, headers={"content-type": content_type})
        uploaded = client.post("/v1/predict?top_k=2", files={"file": ("x", image, "image/png")})
        assert raw.status_code == 200, raw.text
        [raw_entry], [file_entry] = raw.json()["predictions"], uploaded.json()["predictions"]
        assert raw_entry["filename"] is None and file_entry["filename"] == "x"
        assert raw_entry["top_k"] == file_entry["top_k"] and len(raw_entry["top_k"]) == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "empty_image"),
        (b"not an image", 415, "unsupported_image"),
        (png(12, size=200), 413, "upload_too_large"),
    ],
)
def test_an_unusable_raw_body_gets_the_image_s_own_error(apps: Apps, body: bytes, status: int, code: str) -> None:
    for client in (apps.fast, apps.route):
        answer = client.post("/v1/predict", content=body, headers={"content-type": "image/png"})
        assert answer.status_code == status, answer.text
        assert answer.json()["code"] == code and answer.json()["predictions"][0]["filename"] is None


def test_a_body_over_the_limit_is_refused_by_the_app_s_limit(tmp_path: Path, synthetic_data_dir: Path) -> None:
    for served in _served(tmp_path / "home", synthetic_data_dir, max_request_bytes=2048):
        big = png(13, size=100)
        assert len(big) > 2048 + 4096  # past the body limit (max of the request and upload limits + framing)
        answers = [
            client.post("/v1/predict", content=big * 20, headers={"content-type": "image/png"})
            for client in (served.fast, served.route)
        ]
        # Starlette's own answer, for a Content-Length over the limit (tests/api/test_fuzz_json.py).
        assert [(a.status_code, a.text) for a in answers] == [(413, "Content Too Large")] * 2
        assert served.fallbacks == ["/v1/predict"]
        # Sent in chunks, with no length announced: the fast path stops reading at the limit; the app's 413.
        chunked = [
            client.post("/v1/predict", content=iter([big] * 20), headers={"content-type": "image/png"})
            for client in (served.fast, served.route)
        ]
        assert [a.status_code for a in chunked] == [413, 413]
        assert chunked[0].json() == chunked[1].json() and "limit" in chunked[0].json()["detail"]
        assert served.fallbacks == ["/v1/predict"] * 2


def test_the_fast_path_keeps_the_request_id_and_the_latency_histogram(apps: Apps) -> None:
    answer = apps.fast.post(
        "/v1/predict", files={"file": ("a.png", png(14), "image/png")}, headers={"X-Request-ID": "trace-42"}
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-42"
    before = _latency_count(apps.fast, "200")
    apps.fast.post("/v1/predict", files={"file": ("a.png", png(14), "image/png")})
    apps.fast.post("/v1/predict", files={"file": ("a.png", b"", "image/png")})
    assert _latency_count(apps.fast, "200") == before + 1
    assert _latency_count(apps.fast, "400") >= 1


def _latency_count(client: TestClient, status: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if (
            line.startswith("fmnist_predict_latency_seconds_count")
            and 'endpoint="predict"' in line
            and f'status="{status}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_keys_and_scopes_hold_on_the_fast_path(tmp_path: Path, synthetic_data_dir: Path) -> None:
    for served in _served(tmp_path / "home", synthetic_data_dir):
        db = served.app.state.db
        _, predict_key = auth.create_key(db, "predicts", ["predict"])
        _, train_key = auth.create_key(db, "trains", ["train"])
        served.app.state.keys._read_at = float("-inf")  # read the new keys now, not within CACHE_SECONDS
        files = {"file": ("a.png", png(15), "image/png")}
        for headers, status in [
            ({}, 401),
            ({"Authorization": "Bearer nope"}, 401),
            ({"Authorization": f"Bearer {train_key}"}, 403),
            ({"Authorization": f"Bearer {predict_key}"}, 200),
        ]:
            served.fallbacks.clear()
            fast = served.fast.post("/v1/predict", files=files, headers=headers)
            assert served.fallbacks == []
            assert fast.status_code == status, fast.text
            route_app = served.route.app
            route_app.state.keys._read_at = float("-inf")  # type: ignore[attr-defined]
            _same(fast, served.route.post("/v1/predict", files=files, headers=headers))


def test_with_cors_on_predictions_take_the_app_s_path(tmp_path: Path, synthetic_data_dir: Path) -> None:
    settings = Settings(home=tmp_path / "home", data_dir=synthetic_data_dir, cors_origins="https://ui.example")
    assert create_app(settings).fast_predict is None
