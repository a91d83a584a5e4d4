"""The one error hierarchy: every error the service answers with, as a class with its HTTP status and a stable
machine-readable ``code``.

The server raises these (``service.api.errors.error_response`` turns one into an answer: ``{"detail": ...,
"code": ...}``), the client turns an answer back into the same class (``ServiceError.from_answer``), and the
CLI maps the families to its exit codes. Families (``NotFound``, ``Conflict``, ``InvalidRequest``...) are what
callers usually catch; the leaves name the case. Answers that no leaf describes (a route that does not exist,
a body that is not JSON, errors from ``models/``, which knows nothing of HTTP) carry a family's code, or one from
``service.api.errors.FOREIGN_ERRORS``, and come back to the client as the family by their status.

This module imports nothing beyond the standard library: the client reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any


class ServiceError(Exception):
    """An error the service answers with. ``status``: the HTTP status; ``code``: what went wrong, stable across
    releases (``job_not_found``); ``detail``: what to fix, for people (a string, or for ``InvalidRequest`` a
    list of field errors ``{"loc", "msg", "type"}``). On the client side, ``response`` is the HTTP answer."""

    status: int = 500
    code: str = "error"

    def __init__(self, detail: Any = None) -> None:
        self.detail: Any = detail if detail is not None else (self.__doc__ or "").strip().split("\n")[0]
        self.response: Any = None  # the httpx.Response, on the client side
        super().__init__(describe_detail(self.detail))

    retry_after: float | None = None  # seconds; sent as Retry-After (429, 503)

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries (``Retry-After``; ``WWW-Authenticate`` on a 401)."""
        return {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The field errors of an invalid request (``loc``, ``msg``, ``type``); empty for other errors."""
        if not isinstance(self.detail, list):
            return []
        return [error for error in self.detail if isinstance(error, dict)]

    @classmethod
    def from_answer(cls, status: int, body: Any, response: Any = None) -> ServiceError:
        """The error an HTTP answer describes: the class its ``code`` names, else the family of its ``status``
        (``ServiceError`` itself for a status no family has). ``body``: the decoded JSON, or text."""
        detail = body.get("detail", body) if isinstance(body, Mapping) else body
        code = body.get("code") if isinstance(body, Mapping) else None
        kind = _BY_CODE.get(code) if isinstance(code, str) else None
        if kind is None or kind.status // 100 != status // 100:
            kind = family(status)
        error = kind.__new__(kind)
        ServiceError.__init__(error, detail)
        error.args = (f"{status} {_phrase(status)}: {describe_detail(detail)}",)
        error.status = status  # a family answers several statuses (InvalidRequest: 400, 413, 415, 422)
        if isinstance(code, str):
            error.code = code
        error.response = response
        return error


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def describe_detail(detail: Any) -> str:
    """A ``detail`` in one line: a list of field errors as ``where: what; ...``."""
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for error in detail:
        if isinstance(error, Mapping):
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            parts.append(f"{where}: {error.get('msg', error)}" if where else str(error.get("msg", error)))
        else:
            parts.append(str(error))
    return "; ".join(parts)


# -- families: one per kind of answer -----------------------------------------------------------------


class InvalidRequest(ServiceError, ValueError):
    """The request was refused as it stands (400, 413, 415, 422); ``errors`` lists the fields at fault."""

    status = 422
    code = "invalid_request"


class BadRequest(InvalidRequest):
    """The request could not be read (a form that does not parse)."""

    status = 400
    code = "bad_request"


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the server takes."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    """The body was sent as a type this route does not read (a form where JSON is expected)."""

    status = 415
    code = "unsupported_media_type"


class Unauthorized(ServiceError, PermissionError):
    """401: no API key, or one the server does not know."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="fmnist"'}


class Forbidden(ServiceError, PermissionError):
    """403: the API key lacks the scope this call needs."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError, LookupError):
    """404: no such job, sweep, model, alias or route."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ServiceError):
    """405: the path exists, but not with this method (``Allow`` lists those it takes)."""

    status = 405
    code = "method_not_allowed"


class Conflict(ServiceError, RuntimeError):
    """409: the call does not fit the current state (the job has ended, an alias points at the model...)."""

    status = 409
    code = "conflict"


class RateLimited(ServiceError, RuntimeError):
    """429: too many queued jobs for this key; ``retry_after`` says when to try again, in seconds."""

    status = 429
    code = "rate_limited"


class ServerError(ServiceError):
    """5xx: the server failed, or is unavailable (503, see ``retry_after``)."""

    status = 500
    code = "internal_error"


class ServiceUnavailable(ServerError):
    """503: the server cannot answer now (its database is down or not migrated, or it is at a limit)."""

    status = 503
    code = "unavailable"


# -- the cases ------------------------------------------------------------------------------------------


class InvalidSpec(InvalidRequest):
    """A spec (or a sweep's grid point) failed validation; ``errors`` say which field and why."""

    code = "invalid_spec"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)


class InvalidAliasName(InvalidRequest):
    code = "invalid_alias_name"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"alias {name!r} is not a valid name: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter, and not a model id (32 hex digits)"
        )


class InvalidCursor(InvalidRequest):
    """A listing's ``cursor`` is not one this listing handed out (another sort or other filters, or garbled)."""

    code = "invalid_cursor"

    def __init__(self, message: str) -> None:
        super().__init__([{"loc": ["query", "cursor"], "msg": message, "type": "invalid_cursor"}])


class TooManyTags(InvalidRequest):
    """An update would leave a job with more tags than it may have."""

    code = "too_many_tags"

    def __init__(self, limit: int, count: int) -> None:
        message = f"a job has at most {limit} tags; this update would leave it {count}: remove some (set them to null)"
        super().__init__([{"loc": ["body", "tags"], "msg": message, "type": "too_many_tags"}])


class ImageCountError(InvalidRequest):
    """No image, or more than a request may carry."""

    code = "image_count"


class InvalidKeyRequest(InvalidRequest):
    """An API key cannot be created as asked."""

    code = "invalid_key_request"


class UploadTooLarge(PayloadTooLarge):
    code = "upload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes (FMNIST_MAX_UPLOAD_BYTES)")


class Unauthenticated(Unauthorized):
    """No key, or one that is not known."""

    code = "unauthenticated"


class MissingScope(Forbidden):
    """A valid key without the scope the route needs."""

    code = "missing_scope"


class NotOwner(Forbidden):
    """A valid key changing a job, sweep or study that another key created (service/api/ownership.py)."""

    code = "not_owner"

    def __init__(self, kind: str, row_id: str, owner: str | None, owner_name: str | None, action: str) -> None:
        if owner is None:
            whose = "was created while the server had no API keys, so it has no owner"
            who = "an admin key"
        else:
            named = f"{owner_name!r} ({owner})" if owner_name else repr(owner)
            whose = f"belongs to the API key {named}"
            who = "that key or an admin key"
        super().__init__(f"{kind} {row_id!r} {whose}: only {who} may {action} it")


class JobNotFound(NotFound):
    code = "job_not_found"

    def __init__(self, *job_ids: str) -> None:
        super().__init__(f"no job with id {', '.join(repr(job_id) for job_id in job_ids)}")


class SweepNotFound(NotFound):
    code = "sweep_not_found"

    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"no sweep with id {sweep_id!r}")


class StudyNotFound(NotFound):
    code = "study_not_found"

    def __init__(self, study_id: str) -> None:
        super().__init__(f"no study with id {study_id!r}")


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, ref: str) -> None:
        super().__init__(f"no model or alias named {ref!r}")


class AliasNotFound(NotFound):
    code = "alias_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no alias named {name!r}")


class KeyNotFound(NotFound):
    code = "key_not_found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r}")


class JobNotCancellable(Conflict):
    code = "job_not_cancellable"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} is already {status}; only queued or running jobs can be cancelled")


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a different request; send a new key for a new request"
        )


class ModelUnreadable(ServerError):
    """A registered model's checkpoint could not be loaded (missing, damaged, or from another version)."""

    code = "model_unreadable"


class ModelInUse(Conflict):
    code = "model_in_use"

    def __init__(self, model_id: str, aliases: Sequence[str]) -> None:
        self.aliases = list(aliases)
        super().__init__(
            f"model {model_id} is served by alias(es) {', '.join(sorted(aliases))}: move or delete them first"
        )


class JobModelInUse(ModelInUse):
    """A job whose model an alias serves cannot be deleted: the alias would point at nothing."""

    code = "job_model_in_use"

    def __init__(self, job_id: str, model_id: str, aliases: Sequence[str]) -> None:
        self.aliases = list(aliases)
        Conflict.__init__(  # ModelInUse's family, this message
            self,
            f"job {job_id}'s model {model_id} is served by alias(es) {', '.join(sorted(aliases))}: "
            "move or delete them first (PUT or DELETE /v1/aliases/NAME), then delete the job",
        )


class JobNotEnded(Conflict):
    """Only an ended job (succeeded, failed, cancelled, pruned) can be deleted: a worker may still write to the rest."""

    code = "job_not_ended"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id} is {status}: cancel it first (POST /v1/jobs/{job_id}/cancel), then delete it once it "
            "has ended"
        )


class StudyStillRunning(Conflict):
    """A trial's job cannot be deleted while its study runs: the study's sampler learns from every trial."""

    code = "study_still_running"

    def __init__(self, job_id: str, study_id: str, number: int) -> None:
        super().__init__(
            f"job {job_id} is trial {number} of study {study_id}, which is still running and learns from it: "
            f"wait for the study to end, or cancel it (POST /v1/studies/{study_id}/cancel), then delete the job"
        )


class NoModelYet(Conflict):
    code = "no_model_yet"

    def __init__(self) -> None:
        super().__init__("no trained model yet: submit a training job (POST /v1/jobs) and wait for it to succeed")


class QueueLimitReached(RateLimited):
    code = "queue_limit_reached"

    def __init__(self, limit: int, queued: int, adding: int, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"this key has {queued} jobs queued and the limit is {limit} (FMNIST_MAX_QUEUED_PER_KEY); "
            f"{adding} more would pass it: wait for some to start, or cancel some"
        )


class RateLimitExceeded(RateLimited):
    """Past the request rate one API key (without keys, one client address) may use in a scope."""

    code = "rate_limit_exceeded"
    amount = 0  # the limit's number of requests (the client's copy, made from an answer, has no other)

    def __init__(self, scope: str, limit: str, amount: int, caller: str, retry_after: int) -> None:
        self.amount, self.retry_after = amount, retry_after
        super().__init__(
            f"rate limit reached: {caller} may make {limit} `{scope}` requests "
            f"(FMNIST_RATE_LIMIT_{scope.upper()}); try again in {retry_after} s (Retry-After)"
        )

    def headers(self) -> dict[str, str]:
        # The IETF draft's fields (draft-ietf-httpapi-ratelimit-headers): the quota, what is left of it, and the
        # seconds until enough of it frees up; with nothing left that is the Retry-After.
        return {
            **super().headers(),
            "RateLimit-Limit": str(self.amount),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": f"{self.retry_after:g}",
        }


class PredictQueueFull(ServiceUnavailable):
    """The prediction queue is full: the server is answering as many predictions as it can; retry shortly."""

    code = "predict_queue_full"

    def __init__(self, limit: int, waiting: int, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"the server is busy: {waiting} images are already waiting for a prediction and the queue holds "
            f"{limit} (FMNIST_PREDICT_MAX_QUEUE); retry after {retry_after} s (Retry-After), or spread requests out"
        )


def _subclasses(kind: type[ServiceError]) -> list[type[ServiceError]]:
    found = [kind]
    for sub in kind.__subclasses__():
        found.extend(_subclasses(sub))
    return found


# Only the classes defined here: a code is answered by one class.
_BY_CODE: dict[str, type[ServiceError]] = {kind.code: kind for kind in _subclasses(ServiceError)}
_FAMILY_BY_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: RateLimited,
    500: ServerError,
    503: ServiceUnavailable,
}


def family(status: int) -> type[ServiceError]:
    """The class of an error answer with this HTTP status and no more specific code: its family
    (``NotFound`` for a 404...), ``ServerError`` for another 5xx, else ``ServiceError``."""
    if status in _FAMILY_BY_STATUS:
        return _FAMILY_BY_STATUS[status]
    if status >= 500:
        return ServerError
    return ServiceError
