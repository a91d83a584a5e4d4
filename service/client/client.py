"""A typed Python client for the fmnist-service HTTP API.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="fmk_...") as fmnist:
        job = fmnist.submit(hidden_layers=[256], epochs=10)
        job = fmnist.wait(job.id, on_epoch=lambda m: print(m.epoch, m.test_acc))
        for item in fmnist.predict(["shoe.png", "bag.jpg"]).predictions:
            print(item.index, item.error.detail if isinstance(item, PredictionFailedPublic) else item.class_name)

Answers are the server's own schemas (``service.schemas``); errors are ``ApiError`` subclasses that carry the
server's ``detail``. Importing this module loads neither torch nor numpy.
"""

from __future__ import annotations

import contextlib
import io
import json
import mimetypes
import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, connect_sse
from pydantic import BaseModel

from service.client.errors import (
    ServerError,
    ServerUnreachable,
    WaitTimeout,
    raise_for_error,
)
from service.jobs.status import JobStatus, StudyStatus
from service.schemas import (
    AliasesPublic,
    AliasPublic,
    EpochMetricsPublic,
    ImageErrorPublic,
    JobComparisonPublic,
    JobMetricsPublic,
    JobPublic,
    JobsPublic,
    ModelCardPublic,
    ModelEvaluationPublic,
    ModelPublic,
    ModelsPublic,
    PredictionFailedPublic,
    PredictionPublic,
    PredictPublic,
    StudiesPublic,
    StudyPublic,
    SweepPublic,
    SweepsPublic,
    image_location,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# What one request may carry: the pixels route's fixed limit, and FMNIST_MAX_PREDICT_FILES's default.
PIXEL_IMAGES_PER_REQUEST = 256
FILES_PER_REQUEST = 64
# The server sends a `: ping` every 15 s: a stream silent for longer than this has broken.
STREAM_SILENCE_SECONDS = 40.0
# A study's figures: GET /v1/studies/{id}/{kind}.svg.
STUDY_FIGURES = ("history", "importances", "parallel")

T = TypeVar("T", bound=BaseModel)
Polled = TypeVar("Polled", bound=BaseModel)

# A path (str or os.PathLike), encoded bytes, a PIL image or a numpy array: typed loosely so that importing
# this module needs neither PIL nor numpy.
ImageInput = Any


class _Unset:
    """A label ``update_job`` leaves as it is (None would clear it)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


# -- live events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusEvent:
    """The job changed state (or the stream just opened): the whole job, as ``get_job`` returns it."""

    job: JobPublic


@dataclass(frozen=True)
class EpochEvent:
    """An epoch finished: its metrics."""

    metrics: EpochMetricsPublic


@dataclass(frozen=True)
class EndEvent:
    """The job has ended; the stream closes after this."""

    job_id: str
    status: JobStatus


JobEvent = StatusEvent | EpochEvent | EndEvent


class _Follower:
    """What ``wait`` has reported so far, so that a reconnect or a switch to polling repeats nothing."""

    def __init__(
        self,
        on_epoch: Callable[[EpochMetricsPublic], object] | None,
        on_status: Callable[[JobPublic], object] | None,
    ) -> None:
        self.on_epoch = on_epoch
        self.on_status = on_status
        self.last_epoch = 0
        self.job: JobPublic | None = None
        self._status_key: tuple[Any, ...] | None = None

    def status(self, job: JobPublic) -> None:
        self.job = job
        key = (job.status, job.attempt, job.cancel_requested)
        if key != self._status_key:
            self._status_key = key
            if self.on_status is not None:
                self.on_status(job)

    def epoch(self, metrics: EpochMetricsPublic) -> None:
        if metrics.epoch <= self.last_epoch:
            return
        self.last_epoch = metrics.epoch
        if self.on_epoch is not None:
            self.on_epoch(metrics)


# -- the client ---------------------------------------------------------------------------------------


class Client:
    """A connection to one fmnist-service server; use it as a context manager, or call ``close``.

    Methods are named verb_noun (``get_job``, ``list_models``, ``cancel_sweep``...), but for the everyday
    ``submit``, ``wait`` and ``predict``. The names changed before 1.0 (``get``, ``list``, ``cancel``,
    ``metrics``, ``events``, ``models``, ``aliases`` are gone, without aliases).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "fmnist-client/0.1", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- plumbing

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The server's answer, error or not; raises ``ServerUnreachable`` when there is none."""
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"no answer from {self.url}: {exc or type(exc).__name__}") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        raise_for_error(response)
        return response

    def _get(self, path: str, model: type[T], **params: Any) -> T:
        query = {name: value for name, value in params.items() if value is not None}
        return model.model_validate(self._request("GET", path, params=query).json())

    # -- jobs

    def submit(
        self,
        spec: Mapping[str, Any] | BaseModel | None = None,
        *,
        preset: str | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> JobPublic:
        """Queue a training job. ``spec`` (a dict or a spec model) and keyword fields set the spec; the rest
        keep their defaults (or the preset's). With ``idempotency_key`` a retried call cannot queue twice."""
        body = _spec_body(spec, preset, fields)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return JobPublic.model_validate(self._request("POST", "/v1/jobs", json=body, headers=headers).json())

    def get_job(self, job_id: str) -> JobPublic:
        """A job's status, spec, progress and outcome."""
        return self._get(f"/v1/jobs/{_segment(job_id)}", JobPublic)

    def list_jobs(
        self,
        status: JobStatus | str | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        tags: Sequence[str] | Mapping[str, str | None] | None = None,
        where: Mapping[str, Any] | None = None,
        sort: str | None = None,
        cursor: str | None = None,
        sweep_id: str | None = None,
        study_id: str | None = None,
        min_test_acc: float | None = None,
        max_test_acc: float | None = None,
        min_val_acc: float | None = None,
        max_val_acc: float | None = None,
        count: bool = True,
    ) -> JobsPublic:
        """One page of jobs, newest first unless ``sort`` says otherwise (``count`` is the total; ``count=False``
        leaves it None, which is cheaper); ``next_cursor`` continues it (pass it as ``cursor``, with the same
        filters and sort), or use ``iter_jobs``.

        ``tags``: ``["team:vision", "baseline"]`` or ``{"team": "vision", "baseline": None}`` (None: has the
        tag); every one must hold. ``where``: spec fields and their values, ``{"optimizer": "adam",
        "hidden_layers": [256]}``. ``sort``: ``created_at``, ``test_acc``, ``val_acc`` or ``train_seconds``,
        ``-`` first for descending."""
        params = _job_filters(
            status, tags, where, sweep_id, study_id, min_test_acc, max_test_acc, min_val_acc, max_val_acc
        )
        page = {"sort": sort, "cursor": cursor, "limit": limit, "offset": offset, "count": count}
        return self._get("/v1/jobs", JobsPublic, **params, **page)

    def iter_jobs(
        self,
        status: JobStatus | str | None = None,
        *,
        tags: Sequence[str] | Mapping[str, str | None] | None = None,
        where: Mapping[str, Any] | None = None,
        sort: str | None = None,
        sweep_id: str | None = None,
        study_id: str | None = None,
        min_test_acc: float | None = None,
        max_test_acc: float | None = None,
        min_val_acc: float | None = None,
        max_val_acc: float | None = None,
        page_size: int = 100,
    ) -> Iterator[JobPublic]:
        """Every job the filters keep, in order (``list_jobs``'s filters and sort), a page at a time: each page
        continues the last by its cursor, so none is repeated or skipped while jobs come and go."""
        params = _job_filters(
            status, tags, where, sweep_id, study_id, min_test_acc, max_test_acc, min_val_acc, max_val_acc
        )
        cursor = None
        while True:
            page = self._get("/v1/jobs", JobsPublic, **params, sort=sort, cursor=cursor, limit=page_size, count=False)
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def update_job(
        self,
        job_id: str,
        *,
        tags: Mapping[str, str | None] | _Unset | None = UNSET,
        note: str | _Unset | None = UNSET,
    ) -> JobPublic:
        """Label a job: ``tags`` merge into its tags (a value sets a tag, None removes it, tags not named stay;
        ``tags=None`` removes them all); ``note`` replaces its note (None clears it). What is left out stays."""
        body: dict[str, Any] = {}
        if not isinstance(tags, _Unset):
            body["tags"] = None if tags is None else dict(tags)
        if not isinstance(note, _Unset):
            body["note"] = note
        return JobPublic.model_validate(self._request("PATCH", f"/v1/jobs/{_segment(job_id)}", json=body).json())

    def compare_jobs(self, job_ids: Sequence[str]) -> JobComparisonPublic:
        """Up to 12 jobs side by side: the spec fields that differ, each job's final and best epochs."""
        if isinstance(job_ids, str):
            raise TypeError("compare_jobs takes a list of job ids")
        return self._get("/v1/compare", JobComparisonPublic, jobs=",".join(job_ids))

    def cancel_job(self, job_id: str) -> JobPublic:
        """Cancel a queued or running job (a running one stops at its next batch)."""
        return JobPublic.model_validate(self._request("POST", f"/v1/jobs/{_segment(job_id)}/cancel").json())

    def delete_job(self, job_id: str) -> None:
        """Delete an ended job with its metrics and model. Raises ``Conflict`` (409) for a queued or running job
        (``job_not_ended``: cancel it first), while an alias serves its model (``job_model_in_use``) and for a
        trial of a running study (``study_still_running``); ``Forbidden`` (``not_owner``) for another key's job."""
        self._request("DELETE", f"/v1/jobs/{_segment(job_id)}")

    def get_metrics(self, job_id: str) -> JobMetricsPublic:
        """Per-epoch metrics so far."""
        return self._get(f"/v1/jobs/{_segment(job_id)}/metrics", JobMetricsPublic)

    def follow_events(
        self, job_id: str, *, last_epoch: int | None = None, timeout: float | None = None
    ) -> Generator[JobEvent, None, None]:
        """Follow a job live: a `StatusEvent` first and on each change, an `EpochEvent` per epoch (after
        ``last_epoch``), and an `EndEvent` once the job has ended, after which the iterator stops.

        Raises ``WaitTimeout`` when the stream is still open after ``timeout`` seconds."""
        headers = {"Last-Event-ID": str(last_epoch)} if last_epoch else {}
        expired = threading.Event()
        try:
            with connect_sse(
                self._http,
                "GET",
                f"/v1/jobs/{_segment(job_id)}/events",
                headers=headers,
                timeout=httpx.Timeout(self.timeout, read=STREAM_SILENCE_SECONDS),
            ) as source:
                if not source.response.is_success:
                    source.response.read()
                    raise_for_error(source.response)
                # The server's pings keep every read short, so a read timeout cannot end the wait: shutting the
                # socket down from a timer does (closing it would not wake a read blocked on it).
                timer = None
                if timeout is not None:
                    timer = threading.Timer(max(timeout, 0.0), _expire, args=(source.response, expired))
                    timer.daemon = True
                    timer.start()
                try:
                    for event in source.iter_sse():
                        parsed = _parse_event(event.event, event.data)
                        if parsed is not None:
                            yield parsed
                finally:
                    if timer is not None:
                        timer.cancel()
        except (httpx.TransportError, httpx.StreamError) as exc:
            if expired.is_set():
                raise WaitTimeout(f"job {job_id} had not ended when the timeout passed") from None
            raise ServerUnreachable(f"the event stream from {self.url} broke: {exc or type(exc).__name__}") from exc

    def wait(
        self,
        job_id: str,
        *,
        on_epoch: Callable[[EpochMetricsPublic], object] | None = None,
        on_status: Callable[[JobPublic], object] | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
    ) -> JobPublic:
        """Block until the job ends and return it; ``on_epoch`` gets each epoch's metrics as it is recorded
        and ``on_status`` the job whenever its state changes.

        It follows the live event stream, and polls instead when the stream is refused or breaks.
        Raises ``WaitTimeout`` after ``timeout`` seconds (the job itself goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        follower = _Follower(on_epoch, on_status)
        try:
            ended = self._follow_stream(job_id, follower, deadline)
        except (ServerUnreachable, SSEError, ServerError):
            ended = False  # a proxy that buffers or refuses streams, a server at its stream limit: poll
        if not ended:
            self._follow_polling(job_id, follower, deadline, poll_interval)
        assert follower.job is not None
        return follower.job

    def _follow_stream(self, job_id: str, follower: _Follower, deadline: float | None) -> bool:
        """Follows the stream until `end`; False when it closed before the job ended."""
        remaining = None if deadline is None else deadline - time.monotonic()
        events = self.follow_events(job_id, last_epoch=follower.last_epoch, timeout=remaining)
        with contextlib.closing(events):
            for event in events:
                if isinstance(event, StatusEvent):
                    follower.status(event.job)
                elif isinstance(event, EpochEvent):
                    follower.epoch(event.metrics)
                else:
                    if follower.job is None or not follower.job.status.is_terminal:
                        follower.status(self.get_job(job_id))
                    return True
        return False

    def _follow_polling(self, job_id: str, follower: _Follower, deadline: float | None, interval: float) -> None:
        while True:
            job = self.get_job(job_id)
            if job.progress.epoch > follower.last_epoch or job.status.is_terminal:
                for row in self.get_metrics(job_id).epochs:
                    follower.epoch(row)
            follower.status(job)
            if job.status.is_terminal:
                return
            _check_deadline(deadline, job_id)
            pause = interval if deadline is None else min(interval, max(deadline - time.monotonic(), 0.0))
            time.sleep(pause)

    # -- predictions

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        model: str | None = None,
        top_k: int = 3,
    ) -> PredictPublic:
        """Classify images: file paths, encoded bytes (PNG or JPEG), PIL images, or numpy arrays (a 28x28
        array of 0-255 grey levels, or a stack of them, goes to the pixels route as-is; larger ones are
        sent as PNG photos). One image or a list.

        Returns one entry per image, in order, its ``index`` counted over all of ``images``: a
        `PredictionPublic`, or a `PredictionFailedPublic` whose ``error`` says why the server could not use
        that image (corrupt, not an image, too large...); ``failed`` counts those. A bad image never costs
        the others their predictions. Raises `ApiError` for what concerns the whole call (unknown model,
        no model yet, a bad ``top_k``), ``TypeError`` for an input it cannot send.

        ``model``: an id or alias (default: the server's `production` alias, else its newest model).
        Several requests, when there are more images than one may carry, all use the first one's model.
        """
        items = _as_list(images)
        if not items:
            raise ValueError("no image to classify")
        uploads: list[tuple[int, tuple[str, bytes, str]]] = []
        pixels: list[tuple[int, list[list[int]]]] = []
        position = 0
        for item in items:
            for kind, payload in _encode_image(item):
                if kind == "pixels":
                    pixels.append((position, payload))
                else:
                    uploads.append((position, payload))
                position += 1
        results: dict[int, PredictionPublic | PredictionFailedPublic] = {}
        model_id = model
        routes: list[tuple[Callable[[list[Any], str | None, int], PredictPublic], list[tuple[int, Any]], int]] = [
            (self._predict_files, uploads, FILES_PER_REQUEST),  # the first answer's model serves every request after
            (self._predict_pixels, pixels, PIXEL_IMAGES_PER_REQUEST),
        ]
        for send, queued, per_request in routes:
            for start in range(0, len(queued), per_request):
                chunk = queued[start : start + per_request]
                answer = send([payload for _, payload in chunk], model_id, top_k)
                model_id = answer.model_id
                for (index, _), item in zip(chunk, answer.predictions, strict=True):
                    results[index] = _renumbered(item, index)
        assert model_id is not None
        predictions = [results[index] for index in range(position)]
        failed = sum(isinstance(item, PredictionFailedPublic) for item in predictions)
        return PredictPublic(model_id=model_id, predictions=predictions, failed=failed)

    def _predict_files(self, files: list[tuple[str, bytes, str]], model: str | None, top_k: int) -> PredictPublic:
        params = _predict_params(model, top_k)
        multipart = [("files", file) for file in files]
        response = self._send("POST", "/v1/predict", params=params, files=multipart)
        if not response.is_success and _has_entries(response):
            # No image could be used: the error status comes with every image's entry, which is the answer.
            return PredictPublic.model_validate(response.json())
        raise_for_error(response)
        return PredictPublic.model_validate(response.json())

    def _predict_pixels(self, images: list[list[list[int]]], model: str | None, top_k: int) -> PredictPublic:
        params = _predict_params(model, top_k)
        response = self._request("POST", "/v1/predict/pixels", params=params, json={"images": images})
        return PredictPublic.model_validate(response.json())

    # -- models and aliases

    def list_models(self, *, limit: int = 100, offset: int = 0) -> ModelsPublic:
        """Trained models, newest first, with their aliases."""
        return self._get("/v1/models", ModelsPublic, limit=limit, offset=offset)

    def get_model(self, model_ref: str) -> ModelPublic:
        """One model, by id or alias."""
        return self._get(f"/v1/models/{_segment(model_ref)}", ModelPublic)

    def get_model_evaluation(self, model_ref: str) -> ModelEvaluationPublic:
        """A model's evaluation (by id or alias) on the test split, and on its job's validation rows: confusion
        matrix, per-class scores, confused pairs, calibration. Computed on the server the first time for a
        model trained before evaluations existed; ``ServiceUnavailable`` when the server has no data set then."""
        return self._get(f"/v1/models/{_segment(model_ref)}/evaluation", ModelEvaluationPublic)

    def get_model_card(self, model_ref: str) -> ModelCardPublic:
        """A model's card (by id or alias): its spec and size, the epoch it keeps and why, its evaluation, lineage
        (job, sweep or study trial, attempts), provenance (data digests, seed, code and torch versions, device,
        training time), the input it expects and its measured limits on real uploads. Evaluates the model on the
        server the first time, as ``get_model_evaluation`` does."""
        return self._get(f"/v1/models/{_segment(model_ref)}/card", ModelCardPublic)

    def delete_model(self, model_id: str) -> None:
        """Delete a model and its checkpoint (refused, 409, while an alias points at it)."""
        self._request("DELETE", f"/v1/models/{_segment(model_id)}")

    def download_model(self, model_ref: str, path: str | os.PathLike[str]) -> Path:
        """Save a model's checkpoint (safetensors) to ``path``."""
        target = Path(path)
        target.write_bytes(self._request("GET", f"/v1/models/{_segment(model_ref)}/download").content)
        return target

    def list_aliases(self) -> list[AliasPublic]:
        """Every alias and the model it points at."""
        return self._get("/v1/aliases", AliasesPublic).aliases

    def get_alias(self, name: str) -> AliasPublic:
        return self._get(f"/v1/aliases/{_segment(name)}", AliasPublic)

    def set_alias(self, name: str, model_id: str) -> AliasPublic:
        """Point an alias at a model (an id, or another alias to copy); created or moved."""
        response = self._request("PUT", f"/v1/aliases/{_segment(name)}", json={"model_id": model_id})
        return AliasPublic.model_validate(response.json())

    def delete_alias(self, name: str) -> None:
        """Remove an alias (the model stays)."""
        self._request("DELETE", f"/v1/aliases/{_segment(name)}")

    # -- sweeps

    def submit_sweep(
        self,
        grid: Mapping[str, Sequence[Any]],
        base: Mapping[str, Any] | BaseModel | None = None,
        *,
        preset: str | None = None,
        idempotency_key: str | None = None,
    ) -> SweepPublic:
        """Queue one job per combination of ``grid``'s values, each on top of ``base`` (and ``preset``)."""
        body = {"base": _spec_body(base, preset, {}), "grid": {name: list(values) for name, values in grid.items()}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return SweepPublic.model_validate(self._request("POST", "/v1/sweeps", json=body, headers=headers).json())

    def get_sweep(self, sweep_id: str) -> SweepPublic:
        """A sweep's jobs, best first."""
        return self._get(f"/v1/sweeps/{_segment(sweep_id)}", SweepPublic)

    def list_sweeps(self, *, limit: int = 20, offset: int = 0) -> SweepsPublic:
        return self._get("/v1/sweeps", SweepsPublic, limit=limit, offset=offset)

    def cancel_sweep(self, sweep_id: str) -> SweepPublic:
        """Cancel every job of the sweep that has not ended."""
        return SweepPublic.model_validate(self._request("POST", f"/v1/sweeps/{_segment(sweep_id)}/cancel").json())

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        on_change: Callable[[SweepPublic], object] | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
    ) -> SweepPublic:
        """Block until every job of the sweep has ended (polling); ``on_change`` gets the sweep when its
        counts change."""
        return _poll_until(
            lambda: self.get_sweep(sweep_id),
            changed=lambda sweep: sweep.counts,
            done=lambda sweep: all(job.status.is_terminal for job in sweep.jobs),
            on_change=on_change,
            timeout=timeout,
            poll_interval=poll_interval,
            what=sweep_id,
        )

    # -- studies

    def submit_study(
        self,
        space: Mapping[str, Mapping[str, Any] | BaseModel],
        base: Mapping[str, Any] | BaseModel | None = None,
        *,
        preset: str | None = None,
        sampler: str | Mapping[str, Any] | BaseModel = "tpe",
        pruner: str | Mapping[str, Any] | BaseModel = "median",
        trials: int = 20,
        max_concurrent: int = 4,
        seed: int | None = None,
        idempotency_key: str | None = None,
    ) -> StudyPublic:
        """Start an adaptive search: the sampler suggests ``trials`` specs from ``space`` (field -> ``{"low",
        "high", "log"?, "step"?, "when"?}`` or ``{"choices": [...], "when"?}``), each on top of ``base`` (and
        ``preset``), at most ``max_concurrent`` at once; the pruner stops trials whose validation accuracy falls
        behind. ``sampler``: "tpe", "random" or "grid", or a dict with ``type`` and options; ``pruner``:
        "median", "successive_halving", "hyperband" or "none", or a dict likewise. ``seed`` is drawn when None."""
        body: dict[str, Any] = {
            "base": _spec_body(base, preset, {}),
            "space": {name: _jsonable_model(param) for name, param in space.items()},
            "sampler": _jsonable_model(sampler),
            "pruner": _jsonable_model(pruner),
            "trials": trials,
            "max_concurrent": max_concurrent,
        }
        if seed is not None:
            body["seed"] = seed
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return StudyPublic.model_validate(self._request("POST", "/v1/studies", json=body, headers=headers).json())

    def get_study(self, study_id: str) -> StudyPublic:
        """A study's trials in the order suggested, their status and learning curves, and the best one so far."""
        return self._get(f"/v1/studies/{_segment(study_id)}", StudyPublic)

    def list_studies(self, *, limit: int = 20, offset: int = 0) -> StudiesPublic:
        """Studies, newest first."""
        return self._get("/v1/studies", StudiesPublic, limit=limit, offset=offset)

    def cancel_study(self, study_id: str) -> StudyPublic:
        """Stop the study: no more trials; queued ones are cancelled, running ones stop at their next batch."""
        return StudyPublic.model_validate(self._request("POST", f"/v1/studies/{_segment(study_id)}/cancel").json())

    def wait_study(
        self,
        study_id: str,
        *,
        on_change: Callable[[StudyPublic], object] | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
    ) -> StudyPublic:
        """Block until the study is no longer running (``completed`` or ``cancelled``), polling; ``on_change``
        gets the study when its status or trial counts change. Raises ``WaitTimeout`` after ``timeout`` seconds
        (the study goes on)."""
        return _poll_until(
            lambda: self.get_study(study_id),
            changed=lambda study: (study.status, study.counts),
            done=lambda study: study.status is not StudyStatus.running,
            on_change=on_change,
            timeout=timeout,
            poll_interval=poll_interval,
            what=f"study {study_id}",
        )

    def get_study_figure(self, study_id: str, kind: str = "history") -> bytes:
        """A study's figure as SVG: ``history`` (the objective per trial and the best so far), ``importances``
        (how much each parameter mattered) or ``parallel`` (parallel coordinates of the trials' parameters)."""
        if kind not in STUDY_FIGURES:
            raise ValueError(f"no study figure {kind!r}: use one of {', '.join(STUDY_FIGURES)}")
        path = f"/v1/studies/{_segment(study_id)}/{kind}.svg"
        return self._request("GET", path, headers={"Accept": "image/svg+xml, application/json"}).content


# -- helpers ------------------------------------------------------------------------------------------


def _segment(value: str) -> str:
    """An id as one path segment: a `/` or `?` in it must not change the route."""
    return quote(value, safe="")


def _predict_params(model: str | None, top_k: int) -> dict[str, Any]:
    return {"top_k": top_k, **({"model": model} if model else {})}


def _value(status: JobStatus | str | None) -> str | None:
    return status.value if isinstance(status, JobStatus) else status


def _job_filters(
    status: JobStatus | str | None,
    tags: Sequence[str] | Mapping[str, str | None] | None,
    where: Mapping[str, Any] | None,
    sweep_id: str | None,
    study_id: str | None,
    *bounds: float | None,
) -> dict[str, Any]:
    """GET /v1/jobs's filter parameters (None: not given)."""
    if isinstance(tags, Mapping):
        tags = [key if value is None else f"{key}:{value}" for key, value in tags.items()]
    elif isinstance(tags, str):
        tags = [tags]
    names = ("min_test_acc", "max_test_acc", "min_val_acc", "max_val_acc")
    return {
        "status": _value(status),
        "tag": list(tags) if tags else None,
        "sweep_id": sweep_id,
        "study_id": study_id,
        **dict(zip(names, bounds, strict=True)),
        **{name: _query_value(value) for name, value in (where or {}).items()},
    }


def _query_value(value: Any) -> Any:
    """A spec value as GET /v1/jobs reads it: a list as JSON (``[256,128]``), an enum as its value."""
    if isinstance(value, list | tuple):
        return json.dumps(list(value), separators=(",", ":"))
    if isinstance(value, Enum):
        return value.value
    return value


def _spec_body(
    spec: Mapping[str, Any] | BaseModel | None, preset: str | None, fields: Mapping[str, Any]
) -> dict[str, Any]:
    if isinstance(spec, BaseModel):
        spec = spec.model_dump(mode="json", exclude_unset=True)
    body = {**(spec or {}), **fields}
    if preset is not None:
        body["preset"] = preset
    return body


def _jsonable_model(value: Any) -> Any:
    """A schema model (``ParamRange``, ``SamplerConfig``...) as the JSON it stands for; anything else as is."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _expire(response: httpx.Response, expired: threading.Event) -> None:
    """Ends a stream from another thread: the blocked read fails at once, and the reader sees ``expired``."""
    expired.set()
    network_stream = response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream is not None else None
    if sock is None:
        response.close()
        return
    with contextlib.suppress(OSError):  # already closed: the stream ended at the same moment
        sock.shutdown(socket.SHUT_RDWR)


def _poll_until(
    fetch: Callable[[], Polled],
    *,
    changed: Callable[[Polled], object],
    done: Callable[[Polled], bool],
    on_change: Callable[[Polled], object] | None,
    timeout: float | None,
    poll_interval: float,
    what: str,
) -> Polled:
    """Fetches until ``done``, every ``poll_interval`` seconds; ``on_change`` gets each answer whose ``changed``
    differs from the last one's. Raises WaitTimeout (naming ``what``) after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: object = _UNSEEN
    while True:
        answer = fetch()
        if (mark := changed(answer)) != seen:
            seen = mark
            if on_change is not None:
                on_change(answer)
        if done(answer):
            return answer
        _check_deadline(deadline, what)
        time.sleep(poll_interval if deadline is None else min(poll_interval, max(deadline - time.monotonic(), 0)))


_UNSEEN = object()


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout(f"{what} had not ended when the wait's timeout passed")


def _parse_event(kind: str, data: str) -> JobEvent | None:
    if kind == "status":
        return StatusEvent(JobPublic.model_validate_json(data))
    if kind == "epoch":
        return EpochEvent(EpochMetricsPublic.model_validate_json(data))
    if kind == "end":
        payload = json.loads(data)
        return EndEvent(job_id=payload["job_id"], status=JobStatus(payload["status"]))
    return None  # an event type this client does not know yet: newer servers may add some


def _has_entries(response: httpx.Response) -> bool:
    """Whether an error answer to /v1/predict carries each image's entry (none could be used), rather than
    refusing the request itself (unknown model, bad parameter...)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("predictions"), list) and "model_id" in body


def _renumbered(
    item: PredictionPublic | PredictionFailedPublic, index: int
) -> PredictionPublic | PredictionFailedPublic:
    """``item`` as the ``index``-th image of the whole call, where the server counted from its own request's
    first image: an error's detail, which names the image, is renumbered too."""
    if item.index == index:
        return item
    if isinstance(item, PredictionPublic):
        return item.model_copy(update={"index": index})
    detail = item.error.detail
    said, meant = image_location(item.index, item.filename), image_location(index, item.filename)
    if detail.startswith(said):
        detail = meant + detail[len(said) :]
    error = ImageErrorPublic(status=item.error.status, type=item.error.type, detail=detail)
    return item.model_copy(update={"index": index, "error": error})


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, list | tuple):
        return list(images)
    return [images]


def _encode_image(item: Any) -> Iterator[tuple[str, Any]]:
    """("pixels", 28x28 grid) or ("file", (name, bytes, type)) for each image an input holds."""
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        yield "file", (path.name, path.read_bytes(), kind)
    elif isinstance(item, bytes | bytearray | memoryview):
        yield "file", ("image", bytes(item), "application/octet-stream")
    elif hasattr(item, "getpixel") and hasattr(item, "save"):  # a PIL image (which numpy could read too)
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        yield "file", ("image.png", buffer.getvalue(), "image/png")
    elif hasattr(item, "__array__") or hasattr(item, "__array_interface__"):  # numpy, or a CPU tensor
        yield from _encode_array(item)
    else:
        raise TypeError(f"cannot send {type(item).__name__} as an image: use a path, bytes, a PIL image or an array")


def _encode_array(item: Any) -> Iterator[tuple[str, Any]]:
    import numpy as np

    array = np.asarray(item)
    if array.dtype.kind == "f" and array.size and float(np.nanmax(array)) <= 1.0:
        array = array * 255.0  # floats in [0, 1], as torchvision's ToTensor gives them
    if array.shape[-2:] == (28, 28) and array.ndim in (2, 3):
        grids = np.clip(np.rint(array), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        for grid in grids:
            yield "pixels", grid.tolist()
        return
    from PIL import Image as PILImageModule

    buffer = io.BytesIO()
    PILImageModule.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    yield "file", ("image.png", buffer.getvalue(), "image/png")
