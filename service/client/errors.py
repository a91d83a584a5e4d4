"""What the client raises: the server's error answers as the service's own error classes (``service.errors``:
``JobNotFound`` is a ``NotFound``, with ``status``, ``code`` and ``detail``), and transport failures."""

from __future__ import annotations

import contextlib

import httpx

from service.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    ServiceError,
    Unauthorized,
    describe_detail,
)

# The name the client has used for an error answer; every one is a ServiceError.
ApiError = ServiceError

__all__ = [
    "ApiError",
    "ClientError",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "RateLimited",
    "ServerError",
    "ServerUnreachable",
    "Unauthorized",
    "WaitTimeout",
    "describe_detail",
    "raise_for_error",
]


class ClientError(Exception):
    """A failure on the client's side of the wire (the server's answers are ``ServiceError``)."""


class ServerUnreachable(ClientError, ConnectionError):
    """No answer from the server: it is down, the URL is wrong, or the network dropped the request."""


class WaitTimeout(ClientError, TimeoutError):
    """``wait`` gave up before the job ended (the job goes on)."""


def raise_for_error(response: httpx.Response) -> None:
    """Raises the ``ServiceError`` an error answer describes (by its ``code``, else by its status's family);
    returns for a success. ``retry_after`` (seconds) comes from the ``Retry-After`` header."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text or response.reason_phrase
    error = ServiceError.from_answer(response.status_code, body, response)
    with contextlib.suppress(KeyError, ValueError):
        error.retry_after = float(response.headers["retry-after"])
    raise error
