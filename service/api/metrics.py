"""Prometheus metrics at ``GET /metrics``: what this API process measures, and what the database knows.

Two kinds of number, collected two ways:

- The API process measures its own work: predict latency per request (an ASGI middleware, one
  ``Histogram.observe``), and from the predictor, at scrape time, the micro-batch sizes and the model
  cache's hits and misses (plain counters that the batching thread bumps, no lock and no Prometheus call),
  the requests shed at the queue bound and those refused by the rate limits (plain counters too).
- Job numbers come from the database when Prometheus scrapes, so every API replica reports the same,
  right, values whichever process started, ran or ended the jobs. Each query is bounded and uses an
  index; when the database does not answer, those metrics are left out, ``fmnist_database_up`` is 0, and
  the scrape still succeeds.

Job durations are a *gauge histogram* over the latest ``RECENT_JOBS`` submitted jobs that ended in each final
state.
A true (cumulative) histogram of every job would need either a scan of all jobs at every scrape or the
worker to push its numbers somewhere; the recent window reads at most that many rows through the
(status, created_at) index, and ``histogram_quantile`` works on it directly (no ``rate()``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs.status import JobStatus
from service.store.db import Database, db_now
from service.store.tables import EpochMetric, Job

if TYPE_CHECKING:
    from service.api.ratelimit import RateLimits
    from service.serving.predictor import Predictor

log = logging.getLogger(__name__)

# The paths whose latency is measured, by their label.
PREDICT_ENDPOINTS = {"/v1/predict": "predict", "/v1/predict/pixels": "predict_pixels"}
# One 28x28 upload takes about 1.5 ms alone; 64 files in one request, about 80 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Images per forward pass (FMNIST_PREDICT_MAX_BATCH, 256 by default).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# From a second (a GPU job) to a day.
JOB_DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
RECENT_JOBS = 1000
FINAL_STATUSES = [status for status in JobStatus if status.is_terminal]


class StatusTimer:
    """Observes request times into a histogram labelled (endpoint, status), each child looked up once:
    ``labels()`` takes a lock and builds a key on every call."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._children: dict[tuple[str, int], Histogram] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        child = self._children.get((endpoint, status))
        if child is None:
            child = self._children.setdefault((endpoint, status), self.histogram.labels(endpoint, str(status)))
        child.observe(seconds)


class PredictLatencyMiddleware:
    """Times every request to a predict endpoint, from its first byte in to its last byte out.

    Pure ASGI (no ``BaseHTTPMiddleware``): other paths pass through with one dictionary lookup.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.timer = app, StatusTimer(histogram)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = PREDICT_ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":  # a CORS preflight or a 405 is no prediction
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self.timer.observe(endpoint, status, time.perf_counter() - started)


class PredictorCollector(Collector):
    """The predictor's own counters, read at scrape time: batch sizes and model cache lookups."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def collect(self) -> Iterator[Metric]:
        predictor = self.predictor
        sizes = dict(predictor.forward_sizes)  # one C-level copy: the batching thread may be adding
        yield HistogramMetricFamily(
            "fmnist_predict_batch_size",
            "Images per forward pass: the micro-batch of concurrent requests' images that one model ran at once.",
            buckets=_cumulative(sizes, BATCH_SIZE_BUCKETS),
            sum_value=sum(size * count for size, count in sizes.items()),
        )
        yield CounterMetricFamily(
            "fmnist_model_cache_hits",
            "Predictions whose model was already loaded in this API process.",
            value=predictor.cache_hits,
        )
        yield CounterMetricFamily(
            "fmnist_model_cache_misses",
            "Predictions that had to load their model's checkpoint from disk first.",
            value=predictor.cache_misses,
        )
        yield CounterMetricFamily(
            "fmnist_predict_shed",
            "Prediction requests refused at once with a 503 because FMNIST_PREDICT_MAX_QUEUE images were waiting.",
            value=predictor.batcher.shed,
        )
        yield GaugeMetricFamily(
            "fmnist_predict_queue_images",
            "Images waiting for a forward pass now (503 at FMNIST_PREDICT_MAX_QUEUE).",
            value=predictor.batcher.waiting,
        )
        yield GaugeMetricFamily(
            "fmnist_model_cache_models", "Models loaded in this API process.", value=len(predictor.cache)
        )
        yield GaugeMetricFamily(
            "fmnist_model_cache_capacity",
            "Most models this API process keeps loaded (FMNIST_MODEL_CACHE_SIZE).",
            value=predictor.cache.capacity,
        )


class RateLimitCollector(Collector):
    """Requests refused by the per-key rate limits, by scope, read at scrape time."""

    def __init__(self, rate_limits: RateLimits) -> None:
        self.rate_limits = rate_limits

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "fmnist_rate_limited",
            "Requests refused with a 429 by the per-key rate limits (FMNIST_RATE_LIMIT_PREDICT, _TRAIN), by scope.",
            labels=["scope"],
        )
        for scope, count in sorted(dict(self.rate_limits.refused).items()):
            refused.add_metric([scope], count)
        yield refused


def _cumulative(counts: Mapping[int, int] | Mapping[float, int], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` upper bounds, cumulative counts, ending with +Inf) of counted values."""
    buckets = [(str(float(bound)), sum(n for value, n in counts.items() if value <= bound)) for bound in bounds]
    return [*buckets, ("+Inf", sum(counts.values()))]


class DatabaseCollector(Collector):
    """Jobs by status, the queue, recent jobs' durations and running jobs' speed, queried at scrape time."""

    def __init__(self, db: Database, recent_jobs: int = RECENT_JOBS) -> None:
        self.db, self.recent_jobs = db, recent_jobs

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "fmnist_database_up",
            "1 when the database answered this scrape's queries; 0 leaves out the metrics that come from it.",
        )
        try:
            metrics = list(self._query())
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer, job metrics left out: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _query(self) -> Iterator[Metric]:
        with self.db.read() as session:
            # GROUP BY status reads the (status, created_at) index alone.
            counts: dict[JobStatus, int] = {
                status: count
                for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status))
            }
            oldest_queued = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.queued))
            now = db_now(session)
            durations = {status: self._recent_durations(session, status) for status in FINAL_STATUSES}
            # Running jobs are few (workers x concurrency); each one's newest epoch is a primary-key lookup.
            newest_epoch = (
                select(func.max(EpochMetric.epoch)).where(EpochMetric.job_id == Job.id).correlate(Job).scalar_subquery()
            )
            running = session.execute(
                select(Job.id, Job.device, Job.provenance, EpochMetric.seconds)
                .join(EpochMetric, (EpochMetric.job_id == Job.id) & (EpochMetric.epoch == newest_epoch))
                .where(Job.status == JobStatus.running)
            ).all()

        jobs = GaugeMetricFamily("fmnist_jobs", "Jobs in the database, by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "fmnist_queue_depth", "Jobs queued and not yet claimed by a worker.", value=counts.get(JobStatus.queued, 0)
        )
        age = (now - oldest_queued).total_seconds() if oldest_queued is not None else 0.0
        yield GaugeMetricFamily(
            "fmnist_queue_oldest_age_seconds",
            "How long the oldest queued job has waited (0 with an empty queue).",
            value=max(age, 0.0),
        )
        histogram = GaugeHistogramMetricFamily(
            "fmnist_job_duration_seconds",
            f"Run time (started to finished) of the latest {self.recent_jobs} submitted jobs in each final state.",
            labels=["status"],
        )
        for status, seconds in durations.items():
            histogram.add_metric(
                [status.value], _cumulative(Counter(seconds), JOB_DURATION_BUCKETS), gsum_value=sum(seconds)
            )
        yield histogram
        speed = GaugeMetricFamily(
            "fmnist_training_samples_per_second",
            "Training samples per second of each running job over its latest epoch (evaluation included).",
            labels=["job_id", "device"],
        )
        for job_id, device, provenance, seconds in running:
            train_samples = (provenance or {}).get("train_samples")
            if isinstance(train_samples, int) and seconds > 0:
                speed.add_metric([job_id, device or ""], train_samples / seconds)
        yield speed

    def _recent_durations(self, session: Session, status: JobStatus) -> list[float]:
        rows = session.execute(
            select(Job.started_at, Job.finished_at)
            .where(Job.status == status, Job.started_at.is_not(None), Job.finished_at.is_not(None))
            .order_by(Job.created_at.desc())
            .limit(self.recent_jobs)
        ).all()
        return [(finished - started).total_seconds() for started, finished in rows if started and finished]


class ApiMetrics:
    """One API process's metrics registry: its own instruments and the scrape-time collectors."""

    def __init__(self, db: Database, predictor: Predictor, rate_limits: RateLimits) -> None:
        # A registry per app rather than prometheus_client's global one: each app (and test) counts its own.
        # auto_describe would call the collectors (and query the database) just to register them.
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.predict_latency = Histogram(
            "fmnist_predict_latency_seconds",
            "Time to answer a prediction request, by endpoint and HTTP status.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(PredictorCollector(predictor))
        self.registry.register(RateLimitCollector(rate_limits))
        self.registry.register(DatabaseCollector(db))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (Prometheus text, or OpenMetrics)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics. Open like /healthz: keep it off the public network."""
    api_metrics: ApiMetrics = request.app.state.metrics
    # The database collector queries: off the event loop.
    body, content_type = await run_in_threadpool(api_metrics.exposition, request.headers.get("accept"))
    return Response(body, media_type=content_type)
