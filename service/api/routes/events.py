"""Live job events as server-sent events: status changes and each epoch's metrics, as they are recorded.

The stream follows the database, not the worker: any API replica serves it, whichever worker runs the job.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from types import FrameType
from typing import Annotated, Any

import anyio
import uvicorn
from fastapi import APIRouter, Depends, Header, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service.api.deps import DatabaseDep, SettingsDep
from service.errors import JobNotFound, ServiceUnavailable
from service.jobs import queries as jobs
from service.schemas import EpochMetricsPublic, ErrorPublic, JobPublic
from service.store.db import Database
from service.store.tables import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# A client turned away because the process holds its maximum of streams tries again after this long.
RETRY_AFTER_SECONDS = 5


class EventStreams:
    """Counts the open streams of one API process (each holds a connection and polls the database), and
    ends them all when the process stops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        # Set from a signal handler, read by the streams' loops.
        self.closing = threading.Event()

    def acquire(self) -> bool:
        # No await between the check and the increment: the event loop cannot interleave another request.
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def close_all(self) -> None:
        """Ends every stream at its next look at the database; the clients reconnect to another process."""
        self.closing.set()


class StreamClosingServer(uvicorn.Server):
    """uvicorn's server, which ends the app's event streams first when a signal asks it to stop.

    uvicorn stops only once every response has ended, and an event stream ends with its job: without
    this, Ctrl-C (or a SIGTERM from an orchestrator) would wait for every watched job to finish.
    """

    def __init__(self, config: uvicorn.Config, streams: EventStreams) -> None:
        super().__init__(config)
        self.streams = streams

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.streams.close_all()
        super().handle_exit(sig, frame)


async def stream_slot(request: Request) -> AsyncIterator[None]:
    """Holds one of the process's stream slots while the stream is open; 503 when none is free."""
    streams: EventStreams = request.app.state.event_streams
    if not streams.acquire():
        busy = ServiceUnavailable(
            f"this server already holds {streams.limit} event streams (FMNIST_MAX_EVENT_STREAMS); "
            "retry later, or poll GET /v1/jobs/{id}"
        )
        busy.retry_after = RETRY_AFTER_SECONDS
        raise busy
    try:
        yield
    finally:
        streams.release()


def existing_job(job_id: str, db: DatabaseDep) -> Job:
    """The job, or 404 before the stream starts."""
    return jobs.get_job(db, job_id)


class JobWatch:
    """What one stream has told its client so far, and the events that the job's current state adds."""

    def __init__(self, job_id: str, after_epoch: int) -> None:
        self.job_id = job_id
        self.after_epoch = after_epoch
        self.sent: dict[int, EpochMetricsPublic] = {}
        self._status: tuple[Any, ...] | None = None
        self._progress: tuple[int, int] | None = None
        self.ended = False

    def poll(self, db: Database) -> list[ServerSentEvent]:
        """Reads the job (and its metrics, when its progress moved) and returns the events to send, in order."""
        try:
            job = jobs.get_job(db, self.job_id)
        except JobNotFound:
            self.ended = True
            return []
        # A new attempt or a cancel request is news to a watcher even when the status word stays the same.
        status_key = (job.status, job.attempt, job.cancel_requested)
        progress = (job.epochs_done, job.attempt)
        status_event = None
        if status_key != self._status:
            self._status = status_key
            status_event = ServerSentEvent(event="status", data=JobPublic.from_job(job))
        epoch_events = []
        if progress != self._progress or job.status.is_terminal:
            epoch_events = self._new_epochs(db)
        first = self._progress is None
        self._progress = progress
        if not job.status.is_terminal or first:
            # The stream opens with the job's status; a job that starts running announces it before its epochs.
            events = [*([status_event] if status_event else []), *epoch_events]
        else:
            # A job that ends while watched: its last epochs, then its final status.
            events = [*epoch_events, *([status_event] if status_event else [])]
        if job.status.is_terminal:
            self.ended = True
            events.append(ServerSentEvent(event="end", data={"job_id": job.id, "status": job.status}))
        return events

    def _new_epochs(self, db: Database) -> list[ServerSentEvent]:
        _job, rows = jobs.get_metrics(db, self.job_id)
        events = []
        for row in rows:
            metrics = EpochMetricsPublic.model_validate(row)
            # An attempt that starts over rewrites epochs already sent: send those again, with the same id.
            if metrics.epoch > self.after_epoch and self.sent.get(metrics.epoch) != metrics:
                self.sent[metrics.epoch] = metrics
                events.append(ServerSentEvent(event="epoch", data=metrics, id=str(metrics.epoch)))
        return events


# Errors are JSON, though the route's own answer is an event stream.
# A reference to the one ErrorPublic in the document: a copy inline per answer would make client generators
# build one model per copy, and collide on their names.
JSON_ERROR = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorPublic.__name__}"}}}

LastEventId = Annotated[
    int | None,
    Header(ge=0, le=2**31, description="Resume: epochs up to this one are not sent again (browsers send it)."),
]


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        404: {"description": "No job with this id.", "content": JSON_ERROR},
        503: {
            "description": "The server holds its maximum of open streams; see Retry-After.",
            "content": JSON_ERROR,
            "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
        },
    },
)
async def job_events(
    job: Annotated[Job, Depends(existing_job)],
    db: DatabaseDep,
    settings: SettingsDep,
    _slot: Annotated[None, Depends(stream_slot)],
    request: Request,
    last_event_id: LastEventId = None,
) -> AsyncIterator[ServerSentEvent]:
    """Follow a job live (server-sent events): `status` first and on every change, `epoch` after each epoch.

    `status` carries the job as `GET /v1/jobs/{id}` returns it; `epoch` one row of `GET /v1/jobs/{id}/metrics`,
    with the epoch number as the event id, so that a reconnect with `Last-Event-ID: N` skips epochs up to N.
    Once the job has ended, `end` (`{"job_id", "status"}`) and the stream closes. `: ping` comments keep idle
    connections open every 15 s.
    """
    watch = JobWatch(job.id, last_event_id or 0)
    streams: EventStreams = request.app.state.event_streams
    while not streams.closing.is_set():
        for event in await run_in_threadpool(watch.poll, db):
            yield event
        if watch.ended:
            return
        await anyio.sleep(settings.events_poll_seconds)
