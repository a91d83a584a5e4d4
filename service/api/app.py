"""The FastAPI application: routes, and the one table that maps domain errors to HTTP answers."""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from models.checkpoints import CheckpointError
from models.preprocessing import CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImage
from service import auth, metrics
from service.api.routes import dashboard, events, health, jobs, models, plots, predict, sweeps
from service.api.routes.predict import ImageCountError
from service.api.uploads import MULTIPART_OVERHEAD, UploadTooLarge
from service.auth import KeyStore, MissingScope, Unauthenticated
from service.db import Database, means_unavailable
from service.logs import REQUEST_ID_HEADER, RequestIdMiddleware, request_id_header
from service.metrics import ApiMetrics, PredictLatencyMiddleware
from service.predictor import Predictor
from service.queue import IdempotencyConflict, JobNotCancellable, JobNotFound, QueueLimitReached, SweepNotFound
from service.registry import AliasNotFound, InvalidAliasName, ModelInUse, ModelNotFound, NoModelYet
from service.settings import Settings, get_settings
from service.sweeps import InvalidSpec
from service.wakeup import QueueSignal

log = logging.getLogger(__name__)

HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

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
    UploadTooLarge: 413,
    ImageCountError: 422,
    MissingScope: 403,
    IdempotencyConflict: 409,
}


def _json_safe(value: object) -> object:
    """JSON has no NaN or Infinity: echo such inputs back as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def not_utf8(error: UnicodeDecodeError) -> dict[str, object]:
    """A body that is not UTF-8, as a validation error like FastAPI's for invalid JSON."""
    return {
        "type": "json_invalid",
        "loc": ("body", error.start),
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": f"the body is not UTF-8: byte {error.start} cannot be decoded"},
    }


def _register_error_handlers(app: FastAPI, settings: Settings) -> None:
    def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    def invalid_spec(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidSpec)
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors))}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(InvalidSpec, invalid_spec)

    def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, domain_error)

    def checkpoint_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("checkpoint problem: %s", exc)
        return JSONResponse({"detail": f"the model could not be loaded: {exc}"}, status_code=500)

    def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError)
        if not means_unavailable(exc):
            return unexpected(request, exc)
        log.error("database error: %s", exc)
        return JSONResponse({"detail": "the database is unavailable or not migrated; see /readyz"}, status_code=503)

    def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        # Sent from outside the request-id middleware: the id the log line carries goes back here.
        return JSONResponse(
            {"detail": "internal error; the server log has the details"},
            status_code=500,
            headers=request_id_header(),
        )

    def unauthenticated(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="fmnist"'}
        )

    def queue_full(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=429,
            headers={"Retry-After": str(settings.queue_retry_after_seconds)},
        )

    def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 413:
            limit = request.app.max_body_size
            detail = f"the request body is larger than the limit of {limit} bytes"
            return JSONResponse({"detail": detail}, status_code=413)
        if exc.status_code == 405:
            return method_not_allowed(request)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's JSON reading fails this way, with a bare 400, where invalid JSON gets a 422.
            return invalid_request(request, RequestValidationError([not_utf8(exc.__cause__)]))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    def method_not_allowed(request: Request) -> JSONResponse:
        # Starlette's Allow lists the methods of the first route on the path; a path may have several.
        routes = request.app.router.routes
        methods = [
            method
            for method in HTTP_METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
        ]
        detail = f"{request.method} is not allowed here; use {', '.join(methods)}"
        return JSONResponse({"detail": detail}, status_code=405, headers={"Allow": ", ".join(methods)})

    app.add_exception_handler(Unauthenticated, unauthenticated)
    app.add_exception_handler(QueueLimitReached, queue_full)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(CheckpointError, checkpoint_error)
    app.add_exception_handler(DBAPIError, database_unavailable)
    app.add_exception_handler(Exception, unexpected)


def create_app(settings: Settings | None = None) -> FastAPI:
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

    app = FastAPI(
        # Counted while the body streams in, chunked or not: 413 before more than this is read.
        max_body_size=max(settings.max_request_bytes, settings.max_upload_bytes + MULTIPART_OVERHEAD),
        title="fmnist-service",
        # /docs and /redoc come from service/api/routes/dashboard.py, on local assets instead of a CDN.
        docs_url=None,
        redoc_url=None,
        version="0.1.0",
        summary="Train multilayer perceptrons on Fashion-MNIST and serve their predictions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = Database(settings.sqlalchemy_url)
    app.state.predictor = Predictor(settings, app.state.db)
    app.state.queue_signal = QueueSignal(settings.queue_signal_path)
    app.state.keys = KeyStore(app.state.db, settings.environment_api_keys)
    app.state.event_streams = events.EventStreams(settings.max_event_streams)
    app.state.metrics = ApiMetrics(app.state.db, app.state.predictor)
    app.include_router(health.router)  # open: load balancers and orchestrators probe it
    # Routes are matched in order, each router costing microseconds: the busiest path goes first.
    app.include_router(predict.router, dependencies=[Depends(auth.PREDICT)])
    app.include_router(metrics.router)  # open like /healthz, for Prometheus; keep it off the public network
    app.include_router(jobs.router, dependencies=[Depends(auth.TRAIN)])
    app.include_router(events.router, dependencies=[Depends(auth.TRAIN)])
    app.include_router(sweeps.router, dependencies=[Depends(auth.TRAIN)])
    app.include_router(models.router, dependencies=[Depends(auth.models_scope)])
    app.include_router(plots.train_router, dependencies=[Depends(auth.TRAIN)])
    app.include_router(plots.predict_router, dependencies=[Depends(auth.PREDICT)])
    # The dashboard's pages and the docs: open like /docs, since a page holds no data; its JavaScript calls /v1.
    app.include_router(dashboard.router)
    dashboard.mount_assets(app)
    _register_error_handlers(app, settings)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
            expose_headers=["Location", "Retry-After", REQUEST_ID_HEADER],
        )
    # Added last, so outermost: the id is set before anything else logs, and the latency includes CORS.
    app.add_middleware(PredictLatencyMiddleware, histogram=app.state.metrics.predict_latency)
    app.add_middleware(RequestIdMiddleware)
    return app
