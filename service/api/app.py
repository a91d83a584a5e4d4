"""The FastAPI application: its state, routers, middleware and error handlers (``service.api.errors``), assembled."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from service.api import auth, metrics, ownership
from service.api.auth import KeyStore
from service.api.errors import UnexpectedErrorMiddleware, register_error_handlers
from service.api.fast_predict import PredictFastPath
from service.api.metrics import ApiMetrics, PredictLatencyMiddleware
from service.api.ratelimit import RATE_LIMIT_HEADERS, RateLimits
from service.api.routes import (
    admin,
    compare,
    dashboard,
    events,
    health,
    jobs,
    models,
    plots,
    predict,
    studies,
    study_plots,
    sweeps,
)
from service.api.uploads import MULTIPART_OVERHEAD
from service.jobs.wakeup import QueueSignal
from service.logs import REQUEST_ID_HEADER, RequestIdMiddleware
from service.serving.predictor import Predictor
from service.settings import Settings, get_settings
from service.store.artifacts import ArtifactStore
from service.store.db import Database

log = logging.getLogger(__name__)

NOT_JSON_RESPONSE: dict[str, Any] = {
    "description": "The body was not sent as JSON (`Content-Type: application/json`).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}},
}
COMPONENT_SCHEMAS = "#/components/schemas/"


def operation_id(route: APIRoute) -> str:
    """An operation's id in the OpenAPI document: its route's name (`submit_job`, `predict`), which clients
    generated from the document take for their functions' names. FastAPI warns of a duplicate."""
    return route.name


def _document_non_json_bodies(document: dict[str, Any]) -> None:
    """Documents the 415 that a body sent as anything but JSON gets, on each operation that takes JSON."""
    for path_item in document["paths"].values():
        for operation in path_item.values():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                operation["responses"].setdefault("415", NOT_JSON_RESPONSE)


def _binary_fields(schema: Any, components: dict[str, Any], seen: set[str]) -> Iterator[dict[str, Any]]:
    """The file fields in a multipart body's ``schema``: bytes (a ``contentMediaType``, no ``contentEncoding``),
    in its properties, array items and alternatives, through the components it refers to."""
    if isinstance(schema, list):
        for item in schema:
            yield from _binary_fields(item, components, seen)
        return
    if not isinstance(schema, dict):
        return
    reference = schema.get("$ref", "")
    if reference.startswith(COMPONENT_SCHEMAS) and reference not in seen:
        seen.add(reference)
        yield from _binary_fields(components.get(reference.removeprefix(COMPONENT_SCHEMAS)), components, seen)
    if schema.get("type") == "string" and "contentMediaType" in schema and "contentEncoding" not in schema:
        yield schema
    for keyword in ("items", "anyOf", "oneOf", "allOf", "prefixItems"):
        yield from _binary_fields(schema.get(keyword), components, seen)
    for field in schema.get("properties", {}).values():
        yield from _binary_fields(field, components, seen)


def _document_file_fields(document: dict[str, Any]) -> None:
    """Adds ``format: binary`` beside ``contentMediaType`` on every multipart file field. OpenAPI 3.1 says a
    file with ``contentMediaType`` alone (FastAPI's output); generators that read the 3.0 way (openapi-python-client,
    orval, ng-openapi-gen...) take such a field for text and would send the file's bytes as a text field."""
    components = document.get("components", {}).get("schemas", {})
    for path_item in document["paths"].values():
        for operation in path_item.values():
            multipart = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if multipart is not None:
                for field in _binary_fields(multipart.get("schema"), components, set()):
                    field.setdefault("format", "binary")


def _extend_document(app: FastAPI) -> None:
    """Completes the OpenAPI document FastAPI writes (once, on first use) with what it cannot say itself."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # cached by FastAPI in app.openapi_schema: changed in place
            _document_non_json_bodies(document)
            _document_file_fields(document)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document


class ServiceApp(FastAPI):
    """The FastAPI app, with ``POST /v1/predict`` tried first on its own path (service/api/fast_predict.py)."""

    fast_predict: PredictFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_predict is not None and PredictFastPath.takes(scope):
            scope["app"] = self  # as Starlette sets it: auth and the routes' helpers read app.state through it
            await self.fast_predict(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything loaded so far (torch, FastAPI, ...) lives as long as the process: keep the collector
        # from walking those 400,000 objects, which took 170 ms each time and set the p99 latency.
        gc.collect()
        gc.freeze()
        yield
        app.state.predictor.close()
        app.state.db.dispose()

    max_body_size = max(settings.max_request_bytes, settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app = ServiceApp(
        # Counted while the body streams in, chunked or not: 413 before more than this is read.
        max_body_size=max_body_size,
        title="fmnist-service",
        # /docs and /redoc come from service/api/routes/dashboard.py, on local assets instead of a CDN.
        docs_url=None,
        redoc_url=None,
        version="0.1.0",
        summary="Train multilayer perceptrons on Fashion-MNIST and serve their predictions.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.db = Database(settings.sqlalchemy_url)
    app.state.artifacts = ArtifactStore.for_settings(settings)
    app.state.predictor = Predictor(settings, app.state.db)
    app.state.queue_signal = QueueSignal(settings.queue_signal_path)
    app.state.keys = KeyStore(app.state.db, settings.environment_api_keys)
    app.state.rate_limits = RateLimits(settings)
    app.state.event_streams = events.EventStreams(settings.max_event_streams)
    app.state.metrics = ApiMetrics(app.state.db, app.state.predictor, app.state.rate_limits)
    app.include_router(health.router)  # open: load balancers and orchestrators probe it
    # Routes are matched in order, each router costing microseconds: the busiest path goes first.
    app.include_router(predict.router, dependencies=[Depends(auth.PREDICT)])
    app.include_router(metrics.router)  # open like /healthz, for Prometheus; keep it off the public network
    # Runs: the train scope, and with FMNIST_OWNER_ONLY_READS only the caller's own (service/api/ownership.py).
    runs = [Depends(auth.TRAIN), Depends(ownership.readable)]
    app.include_router(jobs.router, dependencies=runs)
    app.include_router(compare.router, dependencies=runs)
    app.include_router(events.router, dependencies=runs)
    app.include_router(sweeps.router, dependencies=runs)
    app.include_router(studies.router, dependencies=runs)
    app.include_router(study_plots.router, dependencies=runs)
    app.include_router(models.router, dependencies=[Depends(auth.models_scope)])
    app.include_router(admin.router, dependencies=[Depends(auth.ADMIN)])
    app.include_router(plots.train_router, dependencies=runs)
    app.include_router(plots.predict_router, dependencies=[Depends(auth.PREDICT)])
    # The dashboard's pages and the docs: open like /docs, since a page holds no data; its JavaScript calls /v1.
    app.include_router(dashboard.router)
    dashboard.mount_assets(app)
    register_error_handlers(app)
    _extend_document(app)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
            expose_headers=["Location", "Retry-After", *RATE_LIMIT_HEADERS, REQUEST_ID_HEADER],
        )
    # Added last, so outermost: the id is set before anything else logs, and the latency includes CORS.
    app.add_middleware(PredictLatencyMiddleware, histogram=app.state.metrics.predict_latency)
    app.add_middleware(UnexpectedErrorMiddleware)  # inside the request id's: the 500 and its log line carry it
    app.add_middleware(RequestIdMiddleware)
    # CORS headers come from the middleware: with CORS on, predictions take the app's path.
    if settings.predict_fast_path and not settings.cors_origin_list:
        app.fast_predict = PredictFastPath(app, partial(FastAPI.__call__, app), max_body_size)
    return app
