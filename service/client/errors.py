"""What the client raises: transport failures, and the server's error answers as exceptions."""

from __future__ import annotations

import builtins
from typing import Any

import httpx


class ClientError(Exception):
    """Anything this client raises."""


class ServerUnreachable(ClientError, ConnectionError):
    """No answer from the server: it is down, the URL is wrong, or the network dropped the request."""


class WaitTimeout(ClientError, TimeoutError):
    """``wait`` gave up before the job ended (the job goes on)."""


class ApiError(ClientError):
    """The server answered with an error; ``detail`` is its explanation."""

    def __init__(self, status: int, detail: Any, response: httpx.Response) -> None:
        self.status = status
        self.detail = detail
        self.response = response
        super().__init__(f"{status} {response.reason_phrase}: {describe_detail(detail)}")


class InvalidRequest(ApiError):
    """The request was refused as it stands (400, 413, 415, 422); ``errors`` lists the fields at fault."""

    @property
    def errors(self) -> builtins.list[dict[str, Any]]:
        return [error for error in self.detail if isinstance(error, dict)] if isinstance(self.detail, list) else []


class Unauthorized(ApiError):
    """401: no API key, or one the server does not know."""


class Forbidden(ApiError):
    """403: the API key lacks the scope this call needs."""


class NotFound(ApiError):
    """404: no such job, sweep, model or alias."""


class Conflict(ApiError):
    """409: the call does not fit the current state (the job has ended, an alias points at the model...)."""


class RateLimited(ApiError):
    """429: too many queued jobs for this key; ``retry_after`` says when to try again, in seconds."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.response)


class ServerError(ApiError):
    """5xx: the server failed, or is unavailable (503, see ``retry_after``)."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.response)


_ERROR_TYPES: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def describe_detail(detail: Any) -> str:
    """A server's `detail` in one line: FastAPI's list of field errors as `where: what; ...`."""
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
                parts.append(f"{where}: {error.get('msg', error)}" if where else str(error.get("msg", error)))
            else:
                parts.append(str(error))
        return "; ".join(parts)
    return str(detail)


def raise_for_error(response: httpx.Response) -> None:
    """Raises the ``ApiError`` subclass for an error answer; returns for a success."""
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    kind = _ERROR_TYPES.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else ApiError
    raise kind(response.status_code, detail, response)
