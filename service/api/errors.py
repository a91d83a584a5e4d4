"""Error answers: the one table from domain errors to HTTP statuses, answers that stay small and cannot fail
(bounded echoes of what a client sent), and hints for the usual wrong encodings.

Everything here runs on untrusted input on the error path. So nothing recurses over it (a body may nest
arrays 900 deep, which overflowed ``jsonable_encoder`` into a 500), nothing echoes more than a few hundred
characters of it (a JPEG sent as a text field came back whole, 251 KB), and no string goes out that UTF-8
cannot encode (a JSON escape such as ``"\\ud800"`` is a lone surrogate once parsed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import params
from fastapi.routing import APIRoute

from models.preprocessing import CorruptImage, EmptyImage, ImageTooLarge, NoObjectFound, UnsupportedImage
from service.api.auth import MissingScope
from service.api.uploads import ImageCountError, UploadTooLarge
from service.jobs.queue import IdempotencyConflict, JobNotCancellable, JobNotFound, SweepNotFound
from service.registry import AliasNotFound, InvalidAliasName, ModelInUse, ModelNotFound, NoModelYet

INPUT_CHARS = 200  # an echoed `input`: its JSON text, cut here
TEXT_CHARS = 500  # a message, a location's key, a context value: any of them may quote the request
MAX_ERRORS = 50  # listed validation errors; one more entry counts the rest
INTERNAL_ERROR = "internal error; the server log has the details"  # a 500's whole answer: the log has the rest


# Domain error -> HTTP status. The error's message is the answer's `detail`.
ERROR_STATUS: dict[type[Exception], int] = {
    JobNotFound: 404,
    SweepNotFound: 404,
    ModelNotFound: 404,
    AliasNotFound: 404,
    InvalidAliasName: 422,
    ModelInUse: 409,
    JobNotCancellable: 409,
    NoModelYet: 409,
    EmptyImage: 400,
    CorruptImage: 400,
    UnsupportedImage: 415,
    ImageTooLarge: 413,
    NoObjectFound: 422,
    UploadTooLarge: 413,
    ImageCountError: 422,
    MissingScope: 403,
    IdempotencyConflict: 409,
}


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
