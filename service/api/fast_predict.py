"""``POST /v1/predict`` on a dedicated ASGI path, ahead of FastAPI's generic request handling.

Profiled under wrk (32 connections, one 28x28 PNG a request), the event loop spent about 70% of a
prediction request in FastAPI's routing, dependency solving, python-multipart's byte-by-byte form parser
(with an ``UploadFile`` per part) and response validation: more than the model's whole work in the batching
thread. This middleware answers the common request itself: a well-formed multipart body with ``file`` or
``files`` parts (or a raw image body), at most ``model`` and a plain ``top_k`` in the query. It calls the
same code as the route (``service.api.routes.predict``): the same authorisation, image count, size limits,
batching and answer. When the prediction queue is full it answers 503 before reading the body.

Anything else (a malformed or unusual body, a query the route would refuse or parse differently, a client
that went away, a body over the limit) goes to the FastAPI app with the body replayed as it came, so every
error stays the app's own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Literal
from urllib.parse import parse_qsl

from fastapi import FastAPI
from python_multipart.multipart import parse_options_header
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import auth
from service.api.errors import domain_error_answer, internal_error, log_unexpected, status_and_code
from service.api.metrics import PREDICT_ENDPOINTS, StatusTimer
from service.api.routes.predict import (
    DEFAULT_TOP_K,
    MAX_TOP_K,
    MODEL_MAX_LENGTH,
    classify_uploads,
    is_raw_image,
    render,
)
from service.logs import assign_request_id

PATH = "/v1/predict"


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[str, str | None, bytes]] | None:
    """The parts of a ``multipart/form-data`` body: (field name, filename or None, content), in order.

    Strict: None for anything the fast path leaves to Starlette's parser (a preamble or an epilogue, folded
    or unusual part headers, a part without a ``form-data`` disposition or a name, a body cut short). What it
    returns is what Starlette's parser makes of the same body (tested side by side). Names and filenames are
    decoded as UTF-8, else Latin-1, as Starlette does.
    """
    opening = b"--" + boundary
    if not boundary or not body.startswith(opening + b"\r\n"):
        return None
    delimiter = b"\r\n" + opening
    parts: list[tuple[str, str | None, bytes]] = []
    position = len(opening) + 2
    while True:
        headers_end = body.find(b"\r\n\r\n", position)
        if headers_end < 0:
            return None
        disposition = None
        for line in body[position:headers_end].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not name or name[:1] in (b" ", b"\t") or name != name.strip():
                return None
            if name.lower() == b"content-disposition":
                if disposition is not None:
                    return None
                disposition = value.strip()
        if disposition is None:
            return None
        field = _disposition(disposition)
        if field is None:
            return None
        content_start = headers_end + 4
        content_end = body.find(delimiter, content_start)
        if content_end < 0:
            return None
        parts.append((*field, body[content_start:content_end]))
        after = content_end + len(delimiter)
        tail = body[after : after + 2]
        if tail == b"\r\n":
            position = after + 2
        elif tail == b"--" and body[after + 2 :] in (b"", b"\r\n"):
            return parts
        else:
            return None


# What browsers, curl, requests and httpx write; anything else goes through python-multipart's parser.
_SIMPLE_DISPOSITION = re.compile(rb'form-data; name="([^"\\;]*)"(?:; filename="([^"\\;]*)")?')
_SIMPLE_CONTENT_TYPE = re.compile(rb"multipart/form-data; ?boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})")


def _disposition(value: bytes) -> tuple[str, str | None] | None:
    """A part's field name and filename (None without one), read as Starlette reads them; None when the
    header is no ``form-data`` disposition with a name."""
    match = _SIMPLE_DISPOSITION.fullmatch(value)
    if match is not None:
        name, filename = match.groups()
    else:
        kind, options = parse_options_header(value)
        if kind != b"form-data" or b"name" not in options:
            return None
        name, filename = options[b"name"], options.get(b"filename")
    return _decoded(name), None if filename is None else _decoded(filename)


def _boundary(content_type: bytes) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; empty for another type, or one with a charset
    (Starlette then decodes names with it: left to the route)."""
    match = _SIMPLE_CONTENT_TYPE.fullmatch(content_type)
    if match is not None:
        return match.group(1)
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"charset" in options:
        return b""
    return options.get(b"boundary", b"")


def _decoded(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_query(query_string: bytes) -> tuple[str | None, int] | None:
    """``model`` and ``top_k`` from a query string, when the route would read them the same way; None for
    anything it would refuse or that this path does not read (a repeated parameter, a ``top_k`` that is not
    plain digits in range, a ``model`` over its length)."""
    if not query_string:
        return None, DEFAULT_TOP_K
    model: str | None = None
    top_k: int | None = None
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == "model":
            if model is not None or len(value) > MODEL_MAX_LENGTH:
                return None
            model = value
        elif key == "top_k":
            if top_k is not None or not (value.isascii() and value.isdigit() and len(value) <= 2):
                return None
            top_k = int(value)
            if not 1 <= top_k <= MAX_TOP_K:
                return None
    return model, DEFAULT_TOP_K if top_k is None else top_k


def _route_path(scope: Scope) -> str:
    """The path the app routes on: without the ``root_path`` a proxy mounts the app under (as Starlette)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class PredictFastPath:
    """Answers ``POST /v1/predict`` ahead of the FastAPI app's middleware stack, when it can.

    ``ServiceApp`` (service/api/app.py) calls it before anything else. It does itself what the app's
    middleware do for a prediction (the request id, the body limit, the latency histogram, a 500 for an
    unexpected error) and hands anything it does not answer to ``fallback``, the whole FastAPI app, with the
    body replayed: there the middleware and the route take it as if nothing had happened.
    """

    def __init__(self, app: FastAPI, fallback: ASGIApp, max_body_size: int) -> None:
        self.app, self.fallback, self.max_body_size = app, fallback, max_body_size
        self.timer = StatusTimer(app.state.metrics.predict_latency)

    @staticmethod
    def takes(scope: Scope) -> bool:
        """Whether a request is this path's to try: an HTTP ``POST /v1/predict``."""
        return scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) == PATH

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id]
            await send(message)

        request_id = assign_request_id(scope)
        try:
            answered = await self._predict(scope, receive, send_with_id)
        except Exception as exc:
            if status:
                raise  # too late for a 500: the server logs it and cuts the connection
            log_unexpected(scope, exc)
            await internal_error()(scope, receive, send)
            answered = True
            status = 500
        if answered is not True:
            await self.fallback(scope, answered, send)  # its own middleware time it, and give it an id
            return
        self.timer.observe(PREDICT_ENDPOINTS[PATH], status, time.perf_counter() - started)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> Literal[True] | Receive:
        """Answers the request and returns True; or returns the ``receive`` that gives the fallback the body
        again, having sent nothing."""
        content_type = _header(scope, b"content-type")
        query = parse_query(scope["query_string"])
        if content_type is None or query is None:
            return receive
        boundary = b""
        if not is_raw_image(content_type.decode("latin-1")):
            boundary = _boundary(content_type)
            if not boundary:
                return receive
        length = _header(scope, b"content-length")
        if length is not None and not (length.isdigit() and int(length) <= self.max_body_size):
            return receive  # the body limit's to refuse (413), or the server's
        state = self.app.state
        try:
            # Before the body is read: a request without a valid key, past its rate limit (counted once, even if
            # the route takes it after all) or arriving at a full queue is refused at once, in that order.
            await auth.PREDICT(Request(scope))
            state.predictor.batcher.refuse_if_full()
            uploads = await self._uploads(receive, boundary)
            if not isinstance(uploads, tuple):
                return uploads
            filenames, contents = uploads
            model, top_k = query
            answer = await classify_uploads(state.predictor, state.settings, contents, filenames, model, top_k)
        except Exception as exc:
            if status_and_code(exc) is None:
                raise
            await domain_error_answer(exc)(scope, receive, send)
            return True
        status, payload = render(answer)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return True

    async def _uploads(
        self, receive: Receive, boundary: bytes
    ) -> tuple[list[str | None], list[bytes | Exception]] | Receive:
        """The request's uploads as (filenames, contents), from its whole body (multipart when ``boundary``, else
        one raw image); or, for a body this path leaves to the route, the ``receive`` that replays it."""
        messages: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: the app's way of handling it
                return _replay(messages, receive)
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_size:  # chunked past the limit: the body limit's 413
                return _replay(messages, receive)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not boundary:
            return [None], [body]
        parts = parse_multipart(body, boundary)
        if parts is None or any(filename is None or name not in ("file", "files") for name, filename, _ in parts):
            return _replay(messages, receive)
        singles = [part for part in parts if part[0] == "file"]
        if len(singles) > 1:  # the route keeps the last `file`: rare enough to leave to it
            return _replay(messages, receive)
        uploads = singles + [part for part in parts if part[0] == "files"]
        return [filename for _, filename, _ in uploads], [content for _, _, content in uploads]


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then what ``receive`` gives."""
    pending: Iterator[Message] = iter(list(messages))

    async def replay() -> Message:
        for message in pending:
            return message
        return await receive()

    return replay
