"""Error answers: the one mapping from errors to HTTP answers, answers that stay small and cannot fail
(bounded echoes of what a client sent), and hints for the usual wrong encodings.

Everything here runs on untrusted input on the error path. So nothing recurses over it (a body may nest
arrays 900 deep, which overflowed ``jsonable_encoder`` into a 500), nothing echoes more than a few hundred
characters of it (a JPEG sent as a text field came back whole, 251 KB), and no string goes out that UTF-8
cannot encode (a JSON escape such as ``"\\ud800"`` is a lone surrogate once parsed).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.checkpoints import CheckpointError
from models.preprocessing import CorruptImage, EmptyImage, ImageRejected, ImageTooLarge, NoObjectFound, UnsupportedImage
from service.errors import InvalidRequest, ServiceError, family
from service.logs import request_id_header
from service.store.db import means_unavailable

log = logging.getLogger(__name__)

INPUT_CHARS = 200  # an echoed `input`: its JSON text, cut here
TEXT_CHARS = 500  # a message, a location's key, a context value: any of them may quote the request
MAX_ERRORS = 50  # listed validation errors; one more entry counts the rest
DETAIL_CHARS = 1000  # an error's message may quote the request (a path of 16 KB names no job): cut here
INTERNAL_ERROR = "internal error; the server log has the details"  # a 500's whole answer: the log has the rest

# Errors of models/, which knows nothing of HTTP (service.errors.ServiceError carries its own status and code):
# their status and code. The first match wins: the catch-all ImageRejected comes after its subclasses.
FOREIGN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    EmptyImage: (400, "empty_image"),
    CorruptImage: (400, "corrupt_image"),
    UnsupportedImage: (415, "unsupported_image"),
    ImageTooLarge: (413, "image_too_large"),
    NoObjectFound: (422, "no_object_found"),
    ImageRejected: (422, "image_rejected"),
    CheckpointError: (500, "model_unreadable"),
}


def status_and_code(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status and error code the service answers ``exc`` with; None for an error it does not expect
    (which is a 500, logged)."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code
    for kind, answer in FOREIGN_ERRORS.items():
        if isinstance(exc, kind):
            return answer
    return None


def error_answer(
    status: int, detail: object, code: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error answer: ``{"detail": ..., "code": ...}`` (``ErrorPublic``), ``code`` by status when not given."""
    body = {"detail": detail, "code": code or family(status).code}
    return JSONResponse(body, status_code=status, headers=headers)


def domain_error_answer(exc: Exception) -> JSONResponse:
    """The answer to an expected error: a ``ServiceError`` or one of ``FOREIGN_ERRORS``. Its message is the
    ``detail`` (bounded); an invalid request's field errors are listed, each bounded."""
    answer = status_and_code(exc)
    assert answer is not None, exc
    status, code = answer
    headers = exc.headers() if isinstance(exc, ServiceError) else None
    if isinstance(exc, InvalidRequest) and isinstance(exc.detail, list):
        return error_answer(status, public_errors(exc.detail), code, headers)
    message = f"the model could not be loaded: {exc}" if isinstance(exc, CheckpointError) else str(exc)
    return error_answer(status, bounded_text(message, DETAIL_CHARS), code, headers)


def bounded_text(text: str, limit: int = TEXT_CHARS) -> str:
    """``text`` at most ``limit`` characters (ending in "…" when cut), lone surrogates written as ``\\udxxx``."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


class _Text(str):
    """JSON punctuation, copied as it is."""


_END = object()


def _string(text: str, limit: int) -> str:
    return json.dumps(bounded_text(text[: limit + 1], limit + 1), ensure_ascii=False)


def _scalar(value: object, limit: int) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than str() writes (4,300: sys.get_int_max_str_digits)
            return _string(f"<{value.bit_length()}-bit integer>", limit)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _string(str(value), limit)  # JSON has no NaN or Infinity
    if isinstance(value, str):
        return _string(value, limit)
    if isinstance(value, bytes | bytearray):
        return _string(bytes(value[: limit + 1]).decode("utf-8", "backslashreplace"), limit)
    if isinstance(value, BaseException):
        return _string(str(value), limit)
    return _string(f"<{type(value).__name__}>", limit)  # an upload, or anything else that is not JSON


def _array(items: Sequence[object] | set[object] | frozenset[object]) -> Iterator[object]:
    yield _Text("[")
    for index, item in enumerate(items):
        if index:
            yield _Text(",")
        yield item
    yield _Text("]")


def _object(mapping: Mapping[object, object], limit: int) -> Iterator[object]:
    yield _Text("{")
    for index, (key, item) in enumerate(mapping.items()):
        yield _Text(("," if index else "") + _string(str(key), limit) + ":")
        yield item
    yield _Text("}")


def _json_pieces(value: object, limit: int) -> Iterator[str]:
    """``value``'s JSON text in pieces, depth first on an explicit stack: however deep it nests, no recursion."""
    pending: list[Iterator[object]] = [iter((value,))]
    while pending:
        item = next(pending[-1], _END)
        if item is _END:
            pending.pop()
        elif isinstance(item, _Text):
            yield item
        elif isinstance(item, Mapping):
            pending.append(_object(item, limit))
        elif isinstance(item, list | tuple | set | frozenset):
            pending.append(_array(item))
        else:
            yield _scalar(item, limit)


def echoed_input(value: object, limit: int = INPUT_CHARS) -> object:
    """What a client sent, to echo in an error: the value itself (as JSON) when its JSON text fits in ``limit``
    characters, else that text cut to ``limit`` (a string ending in "…"). Reads at most about ``limit``
    characters of ``value`` however large or deep it is."""
    if isinstance(value, str):  # a long text reads better cut than as the start of a JSON string
        return bounded_text(value, limit)
    pieces: list[str] = []
    size = 0
    for piece in _json_pieces(value, limit):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return bounded_text("".join(pieces), limit)
    return json.loads("".join(pieces))


def _public_error(error: Mapping[str, Any]) -> dict[str, object]:
    public: dict[str, object] = {}
    for key, value in error.items():
        if key == "loc":
            public[key] = [part if isinstance(part, int) else bounded_text(str(part), INPUT_CHARS) for part in value]
        elif key in ("type", "msg", "url"):
            public[key] = bounded_text(str(value))
        elif key == "ctx" and isinstance(value, Mapping):
            public[key] = {bounded_text(str(name)): echoed_input(item, TEXT_CHARS) for name, item in value.items()}
        else:
            public[key] = echoed_input(value)
    return public


def public_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, object]]:
    """Validation errors in FastAPI's form (``loc``, ``msg``, ``type``, ``input``, ``ctx``), each bounded: an
    ``input`` of at most ``INPUT_CHARS`` characters, texts of at most ``TEXT_CHARS``; the first ``MAX_ERRORS``,
    then one entry counting the rest (a 1 MB body of wrong pixels made 200,000 errors, 29 MB of answer)."""
    shown = [_public_error(error) for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        first_hidden = errors[MAX_ERRORS]
        shown.append(
            {
                "type": "too_many_errors",
                "loc": [bounded_text(str(part)) for part in first_hidden.get("loc", ())[:1]],
                "msg": f"{len(errors) - MAX_ERRORS} more errors not listed; fix the ones above first",
            }
        )
    return shown


def json_invalid(reason: str, loc: Sequence[str | int] = ("body",)) -> dict[str, object]:
    """A body that is not JSON, in the form FastAPI gives invalid JSON."""
    return {"type": "json_invalid", "loc": list(loc), "msg": "JSON decode error", "input": {}, "ctx": {"error": reason}}


# -- the handlers ---------------------------------------------------------------------------------

HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

# FastAPI's 400 for a body its JSON parser raised on with anything but a JSONDecodeError.
FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"


def not_utf8(error: UnicodeDecodeError) -> dict[str, object]:
    """A body that is not UTF-8, as a validation error like FastAPI's for invalid JSON."""
    return json_invalid(f"the body is not UTF-8: byte {error.start} cannot be decoded", loc=("body", error.start))


def unparsable_json(cause: BaseException) -> dict[str, object]:
    """A JSON body that Python's parser gave up on (FastAPI answers these with a bare 400), as invalid JSON."""
    if isinstance(cause, UnicodeDecodeError):
        return not_utf8(cause)
    if isinstance(cause, RecursionError):
        return json_invalid("arrays or objects nested too deeply; no field of this API nests more than a few levels")
    if isinstance(cause, ValueError) and "digits" in str(cause):  # int("9" * 5000): Python's limit, 4300 digits
        return json_invalid("a number with thousands of digits; no field of this API accepts one")
    return json_invalid(bounded_text(f"{type(cause).__name__}: {cause}"))


def log_unexpected(scope: Scope, exc: BaseException) -> None:
    """One log record for an error no handler expected: the request's method and path (never its body or query),
    and the traceback, which the log formatter bounds (``service.logs.bounded_traceback``)."""
    path = bounded_text(str(scope.get("path", "")), INPUT_CHARS)
    log.error("unhandled error", exc_info=exc, extra={"method": scope.get("method"), "path": path})


def internal_error() -> JSONResponse:
    # The request-id middleware may be outside the code that answers: the id the log line carries goes back here.
    return error_answer(500, INTERNAL_ERROR, headers=request_id_header())


class UnexpectedErrorMiddleware:
    """Answers an exception nothing else handled with a JSON 500, and logs it once.

    Starlette's ``ServerErrorMiddleware`` answers too, then raises the exception again for the server to log:
    uvicorn wrote the whole traceback a second time. Here it stops: one bounded record per failed request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:
                # Too late for a 500. Outer layers own this: Starlette's body limit stops a response this way
                # (its own 413 sent), and anything else reaches the server, which logs it (bounded) and cuts
                # the connection.
                raise
            log_unexpected(scope, exc)
            await internal_error()(scope, receive, send)


def register_error_handlers(app: FastAPI) -> None:
    """Every error becomes a JSON answer ``{"detail", "code"}`` (``ErrorPublic``): the service's own errors
    (``ServiceError`` and ``FOREIGN_ERRORS``) by their status and code, the framework's (validation, unknown
    routes, methods, body limits) in the same form, the database's as a 503, and anything else as a 500."""

    def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        route = request.scope.get("route")
        if takes_json(route) and isinstance(exc.body, bytes | bytearray) and exc.body:
            # FastAPI leaves the body unparsed (bytes) when its Content-Type is not JSON: curl -d sends a form.
            return error_answer(415, not_json_detail(request.headers.get("content-type")))
        return error_answer(422, public_errors(with_file_hints(exc.errors(), route)), "validation_error")

    def expected(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, CheckpointError):
            log.error("checkpoint problem: %s", exc)
        return domain_error_answer(exc)

    def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError)
        if not means_unavailable(exc):
            return unexpected(request, exc)
        log.error("database error: %s", exc)
        return error_answer(503, "the database is unavailable or not migrated; see /readyz")

    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_unexpected(request.scope, exc)
        return internal_error()

    def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 413:
            limit = request.app.max_body_size
            return error_answer(413, f"the request body is larger than the limit of {limit} bytes")
        if exc.status_code == 405:
            return method_not_allowed(request)
        route = request.scope.get("route")
        if exc.detail == FASTAPI_UNPARSABLE_BODY and exc.__cause__ is not None and takes_json(route):
            # FastAPI's JSON reading fails this way (not UTF-8, too deep, too many digits), where invalid JSON
            # gets a 422.
            return error_answer(422, public_errors([unparsable_json(exc.__cause__)]), "validation_error")
        detail = bounded_text(exc.detail, DETAIL_CHARS) if isinstance(exc.detail, str) else exc.detail
        if exc.status_code == 400 and isinstance(exc.__context__, MultiPartException):
            detail = multipart_hint(detail, route)
        return error_answer(exc.status_code, detail, headers=exc.headers)

    def method_not_allowed(request: Request) -> JSONResponse:
        # Starlette's Allow lists the methods of the first route on the path; a path may have several.
        routes = request.app.router.routes
        methods = [
            method
            for method in HTTP_METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
        ]
        detail = f"{request.method} is not allowed here; use {', '.join(methods)}"
        return error_answer(405, detail, headers={"Allow": ", ".join(methods)})

    app.add_exception_handler(RequestValidationError, invalid_request)
    expected_kinds: list[type[Exception]] = [ServiceError, *FOREIGN_ERRORS]
    for kind in expected_kinds:
        app.add_exception_handler(kind, expected)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DBAPIError, database_unavailable)
    # Reached only by an exception from outside UnexpectedErrorMiddleware (which answers all the others).
    app.add_exception_handler(Exception, unexpected)


# -- what a route takes ---------------------------------------------------------------------------


def takes_json(route: object) -> bool:
    """Whether ``route`` reads a JSON body (FastAPI parses it), as opposed to a form, or no body."""
    return (
        isinstance(route, APIRoute)
        and route.body_field is not None
        and not isinstance(route.body_field.field_info, params.Form)
    )


def file_fields(route: object) -> set[str]:
    """The names of ``route``'s multipart file fields (``File()`` parameters)."""
    if not isinstance(route, APIRoute):
        return set()
    return {field.alias for field in route.dependant.body_params if isinstance(field.field_info, params.File)}


def not_json_detail(content_type: str | None) -> str:
    """What to fix when a route that takes JSON gets a body of another type (curl's -d sends a form)."""
    sent = f"Content-Type: {bounded_text(content_type, 100)}" if content_type else "no Content-Type"
    return (
        f"the body must be JSON, sent with `Content-Type: application/json`; this request had {sent} "
        "(with curl: --json '{...}', or -H 'Content-Type: application/json' -d '{...}')"
    )


def with_file_hints(errors: Sequence[Mapping[str, Any]], route: object) -> list[Mapping[str, Any]]:
    """``errors``, each about a file field of ``route`` whose value is not a file replaced by what to send."""
    files = file_fields(route)
    return [
        # A file part arrives as an UploadFile; anything else (a str) came as a text field.
        _file_sent_as_text(error)
        if tuple(error["loc"][:1]) == ("body",)
        and len(error["loc"]) > 1
        and error["loc"][1] in files
        and not hasattr(error.get("input"), "filename")
        else error
        for error in errors
    ]


def _file_sent_as_text(error: Mapping[str, Any]) -> dict[str, object]:
    """The error for a file field that arrived as a text field (curl -F 'file=<photo.png'): what to send instead,
    without echoing the text, which is usually the file's bytes."""
    loc = error["loc"]
    name = str(loc[1])
    example = f"-F {name}=@a.png -F {name}=@b.png" if len(loc) > 2 else f"-F {name}=@photo.png"
    return {
        "type": "file_expected",
        "loc": list(loc),
        "msg": f"`{name}` arrived as a text field; send the image as a file part (with curl: {example})",
    }


def multipart_hint(detail: str, route: object) -> str:
    """A form that failed to parse, on a route that takes files: most likely a file sent as a text field, whose
    size is limited (curl -F 'file=<photo.png' sends the file's bytes as text)."""
    fields = sorted(file_fields(route))
    if not fields:
        return detail
    return f"{detail} Send images as file parts, not text fields (with curl: -F {fields[0]}=@photo.png)."
