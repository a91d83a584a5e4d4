"""Process-wide logging: text or JSON lines, each carrying the request or job it was written for.

The ids travel in context variables: the API's ``RequestIdMiddleware`` sets the request id for the
request's task, the worker sets the job id and attempt (``job_context``) on the thread that runs the job.
A filter on the handler copies them onto every record, uvicorn's access log included, so a line from any
module (models/ too, which knows nothing of this) says which request or job it belongs to.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Literal, TextIO, TypeAlias

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
attempt_var: ContextVar[int | None] = ContextVar("attempt", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
# What a caller's request id may be: the characters of UUIDs, W3C trace ids and the usual proxies' ids. Anything
# else (a log-injection attempt, a megabyte) is replaced by one of ours.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d]%(context)s %(message)s"
JSON_FIELDS = ["levelname", "name", "process", "message"]

# A logged traceback is bounded: a recursion 3,000 frames deep, or an exception whose message quotes a request
# body, once wrote 150 KB per log line. Kept per exception of a chain: the outermost and the innermost frames.
TRACEBACK_OUTER_FRAMES = 6
TRACEBACK_INNER_FRAMES = 12
TRACEBACK_LINE_CHARS = 400
TRACEBACK_CHARS = 8_000

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class _TrimmedStack(traceback.StackSummary):
    """A stack whose middle frames are left out of the formatted traceback, with a line saying how many."""

    inner: traceback.StackSummary
    omitted: int

    def format(self, **options: Any) -> list[str]:
        omitted = f"  ... {self.omitted} frames omitted ...\n"
        return [*super().format(**options), omitted, *self.inner.format(**options)]


def _trim_stack(stack: traceback.StackSummary) -> traceback.StackSummary:
    if len(stack) <= TRACEBACK_OUTER_FRAMES + TRACEBACK_INNER_FRAMES:
        return stack
    trimmed = _TrimmedStack(stack[:TRACEBACK_OUTER_FRAMES])  # not from_list, which makes a plain StackSummary
    trimmed.inner = traceback.StackSummary(stack[-TRACEBACK_INNER_FRAMES:])
    trimmed.omitted = len(stack) - TRACEBACK_OUTER_FRAMES - TRACEBACK_INNER_FRAMES
    return trimmed


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its start, a note of what was left out, and its (longer) end."""
    if len(text) <= limit:
        return text
    note_size = 40  # " ... 123456789 characters omitted ... " and room to spare
    kept = limit - note_size
    note = f" ... {len(text) - kept} characters omitted ... "
    return text[: kept // 4] + note + text[len(text) - (kept - kept // 4) :]


def bounded_traceback(exc_info: ExcInfo) -> str:
    """The traceback as ``logging`` formats it, but at most ``TRACEBACK_CHARS`` characters: each exception of the
    chain keeps its outermost and innermost frames, each line its first and last characters."""
    _kind, exc, tb = exc_info
    if exc is None:
        return "NoneType: None"
    summary = traceback.TracebackException(type(exc), exc, tb, compact=True)
    pending, seen = [summary], set()
    while pending:  # the chain (causes, contexts, groups' members), without recursing
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = _trim_stack(current.stack)
        pending.extend(e for e in (current.__cause__, current.__context__, *(current.exceptions or ())) if e)
    lines = "".join(summary.format()).rstrip("\n").split("\n")
    return _cut("\n".join(_cut(line, TRACEBACK_LINE_CHARS) for line in lines), TRACEBACK_CHARS)


class TextFormatter(logging.Formatter):
    """The text format, with bounded tracebacks."""

    def formatException(self, ei: Any) -> str:
        return bounded_traceback(ei)


class JsonLinesFormatter(JsonFormatter):
    """One JSON object per line, with bounded tracebacks in ``exc_info``."""

    def formatException(self, ei: Any) -> str:
        return bounded_traceback(ei)


class ContextFilter(logging.Filter):
    """Puts the current request id, job id and attempt on each record (as attributes, for JSON) and in
    ``context`` (a short text for the text format); uvicorn's access lines also get their parts as fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        for name, var in (("request_id", request_id_var), ("job_id", job_id_var), ("attempt", attempt_var)):
            value = var.get()
            if value is not None:
                setattr(record, name, value)
                parts.append(f"{name}={value}")
        record.context = " " + " ".join(parts) if parts else ""
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            # uvicorn logs '%s - "%s %s HTTP/%s" %d' % (client, method, path, http_version, status).
            record.client, record.method, record.path, _version, record.status_code = record.args
        return True


def json_formatter() -> logging.Formatter:
    return JsonLinesFormatter(
        JSON_FIELDS,
        timestamp="time",  # ISO 8601 in UTC
        rename_fields={"levelname": "level", "name": "logger"},
        # The text format's own field; uvicorn's coloured copy of its message.
        reserved_attrs=[*RESERVED_ATTRS, "context", "color_message"],
    )


def log_handler(log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing text lines or one JSON object per line, with the current ids, to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    return handler


_configured: tuple[str, LogFormat] | None = None


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Sends every logger's records to stderr, as text lines or one JSON object per line."""
    global _configured
    logging.basicConfig(level=level.upper(), handlers=[log_handler(log_format)], force=True)
    _configured = (level, log_format)


def logging_configuration() -> tuple[str, LogFormat] | None:
    """The level and format ``configure_logging`` last set in this process (None: it was never called), for a
    child process to log the same way."""
    return _configured


@contextmanager
def job_context(job_id: str, attempt: int | None = None) -> Iterator[None]:
    """Every record logged on this thread inside the block carries ``job_id`` (and ``attempt``)."""
    job_token, attempt_token = job_id_var.set(job_id), attempt_var.set(attempt)
    try:
        yield
    finally:
        job_id_var.reset(job_token)
        attempt_var.reset(attempt_token)


# Request ids correlate log lines; they guard nothing, so they need not be unpredictable. os.urandom (and
# uuid4) would release the GIL for a system call on every request, and winning it back from the busy
# prediction thread took 0.6 ms a request under load (measured): a Mersenne Twister never lets go of it.
_ids = random.Random()


def new_request_id() -> str:
    """128 random bits in hex, the size of a UUID4."""
    return f"{_ids.getrandbits(128):032x}"


def request_id_header() -> dict[str, str]:
    """The current request's id as a response header (none outside a request)."""
    request_id = request_id_var.get()
    return {REQUEST_ID_HEADER: request_id} if request_id is not None else {}


def assign_request_id(scope: Scope) -> tuple[bytes, bytes]:
    """Sets the id of the HTTP request ``scope`` describes, for its log lines: the caller's ``X-Request-ID``
    when it is sane, else a new one. Returns the response header that echoes it."""
    incoming = next((value for key, value in scope["headers"] if key == _HEADER_KEY), None)
    if incoming is not None and _SANE_REQUEST_ID.fullmatch(incoming):
        request_id = incoming.decode("ascii")
    else:
        request_id = new_request_id()
    # Not reset afterwards: the server runs each request in a task of its own, whose context ends with it,
    # and the error handler outside the middleware still logs a 500 with the id.
    request_id_var.set(request_id)
    return _HEADER_KEY, request_id.encode("ascii")


class RequestIdMiddleware:
    """Gives each HTTP request an id: the caller's ``X-Request-ID`` when it is sane, else a new one. It is
    echoed in the response's ``X-Request-ID`` header and carried by every log line written for the request.

    Pure ASGI (no ``BaseHTTPMiddleware``): a few microseconds a request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = assign_request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if not any(key.lower() == _HEADER_KEY for key, _ in headers):  # the 500 handler may have set it
                    message["headers"] = [*headers, header]
            await send(message)

        await self.app(scope, receive, send_with_id)
