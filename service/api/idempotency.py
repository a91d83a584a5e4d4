"""The Idempotency-Key header on submissions, and who submits: what ``service.jobs.queue`` needs to answer a
retried request with the job it already created, and to hold each key to its limit of queued jobs."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import Header, Response, status
from pydantic import BaseModel

from service.api.auth import Principal
from service.jobs.queue import Submitter
from service.jobs.wakeup import QueueSignal
from service.schemas import ErrorPublic
from service.settings import Settings

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any string of 1-255 printable characters, new for each new request. Sent again with the "
        "same body it returns the job (or sweep) the first request created, with 200; with another body, 409.",
    ),
]


def idempotent_responses(model: type[BaseModel], what: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": model, "description": f"The {what} an earlier request with this Idempotency-Key created."},
        409: {"model": ErrorPublic, "description": "This Idempotency-Key was used for a different request."},
        429: {"model": ErrorPublic, "description": "Too many queued jobs for this API key; see Retry-After."},
    }


def request_sha256(body: BaseModel) -> str:
    """The request's meaning, not its bytes: key order and spacing do not matter."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submitter(caller: Principal, key: str | None, body: BaseModel, settings: Settings) -> Submitter:
    return Submitter(
        owner=caller.key_id,
        idempotency_key=key,
        request_sha256=request_sha256(body) if key is not None else None,
        max_queued=settings.max_queued_per_key if caller.key_id is not None else None,
        retry_after=settings.queue_retry_after_seconds,
    )


def answer_submission(created: bool, signal: QueueSignal, response: Response, location: str) -> None:
    """What a submission's answer says besides its body: a new submission wakes the workers and stays 202; one
    an Idempotency-Key found again is a 200. Either way ``Location`` points at what was submitted."""
    if created:
        signal.notify()
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = location
