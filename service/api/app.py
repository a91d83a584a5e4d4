"""The FastAPI application: routes, and the one table that maps domain errors to HTTP answers."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.checkpoints import CheckpointError
from service.api import auth, metrics
from service.api.auth import KeyStore, Unauthenticated
from service.api.errors import (
    ERROR_STATUS,
    INPUT_CHARS,
    INTERNAL_ERROR,
    bounded_text,
    json_invalid,
    multipart_hint,
    not_json_detail,
    public_errors,
    takes_json,
    with_file_hints,
)
from service.api.metrics import ApiMetrics, PredictLatencyMiddleware
from service.api.routes import dashboard, events, health, jobs, models, plots, predict, sweeps
from service.api.uploads import MULTIPART_OVERHEAD
from service.jobs.queue import QueueLimitReached
from service.jobs.specs import InvalidSpec
from service.jobs.wakeup import QueueSignal
from service.logs import REQUEST_ID_HEADER, RequestIdMiddleware, request_id_header
from service.serving.predictor import Predictor
from service.settings import Settings, get_settings
from service.store.db import Database, means_unavailable

log = logging.getLogger(__name__)

HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

# FastAPI's 400 for a body its JSON parser raised on with anything but a JSONDecodeError.
FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"
# A domain error's message may quote the request (a path of 16 KB names no job): it is cut here.
DETAIL_CHARS = 1000
NOT_JSON_RESPONSE: dict[str, Any] = {
    "description": "The body was not sent as JSON (`Content-Type: application/json`).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}},
}


def not_utf8(error: UnicodeDecodeError) -> dict[str, object]:
    """A body that is not UTF-8, as a validation error like FastAPI's for invalid JSON."""
    return json_invalid(f"the body is not UTF-8: byte {error.start} cannot be decoded", loc=("body", error.start))


def unparsable_json(cause: BaseException) -> dict[str, object]:
    """A JSON body that Python's parser gave up on (FastAPI answers these with a bare 400), as invalid JSON."""
    if isinstance(cause, UnicodeDecodeError):
        return not_utf8(cause)
    if isinstance(cause, RecursionError):
        return json_invalid("arrays or objects nested too deeply; no field of this API nests more than a few levels")
    if isinstance(cause, ValueError) and "digits" in str(cause):  # int("9" * 5000): Python's limit, 4300 digits
        return json_invalid("a number with thousands of digits; no field of this API accepts one")
    return json_invalid(bounded_text(f"{type(cause).__name__}: {cause}"))


def log_unexpected(scope: Scope, exc: BaseException) -> None:
    """One log record for an error no handler expected: the request's method and path (never its body or query),
    and the traceback, which the log formatter bounds (``service.logs.bounded_traceback``)."""
    path = bounded_text(str(scope.get("path", "")), INPUT_CHARS)
    log.error("unhandled error", exc_info=exc, extra={"method": scope.get("method"), "path": path})


def internal_error() -> JSONResponse:
    # The request-id middleware may be outside the code that answers: the id the log line carries goes back here.
    return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500, headers=request_id_header())


class UnexpectedErrorMiddleware:
    """Answers an exception nothing else handled with a JSON 500, and logs it once.

    Starlette's ``ServerErrorMiddleware`` answers too, then raises the exception again for the server to log:
    uvicorn wrote the whole traceback a second time. Here it stops: one bounded record per failed request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:
                # Too late for a 500. Outer layers own this: Starlette's body limit stops a response this way
                # (its own 413 sent), and anything else reaches the server, which logs it (bounded) and cuts
                # the connection.
                raise
            log_unexpected(scope, exc)
            await internal_error()(scope, receive, send)


def _register_error_handlers(app: FastAPI, settings: Settings) -> None:
    def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        route = request.scope.get("route")
        if takes_json(route) and isinstance(exc.body, bytes | bytearray) and exc.body:
            # FastAPI leaves the body unparsed (bytes) when its Content-Type is not JSON: curl -d sends a form.
            return JSONResponse({"detail": not_json_detail(request.headers.get("content-type"))}, status_code=415)
        return JSONResponse({"detail": public_errors(with_file_hints(exc.errors(), route))}, status_code=422)

    def invalid_spec(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidSpec)
        return JSONResponse({"detail": public_errors(exc.errors)}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(InvalidSpec, invalid_spec)

    def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
        return JSONResponse({"detail": bounded_text(str(exc), DETAIL_CHARS)}, status_code=status)

    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, domain_error)

    def checkpoint_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("checkpoint problem: %s", exc)
        detail = bounded_text(f"the model could not be loaded: {exc}", DETAIL_CHARS)
        return JSONResponse({"detail": detail}, status_code=500)

    def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError)
        if not means_unavailable(exc):
            return unexpected(request, exc)
        log.error("database error: %s", exc)
        return JSONResponse({"detail": "the database is unavailable or not migrated; see /readyz"}, status_code=503)

    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_unexpected(request.scope, exc)
        return internal_error()

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
        route = request.scope.get("route")
        if exc.detail == FASTAPI_UNPARSABLE_BODY and exc.__cause__ is not None and takes_json(route):
            # FastAPI's JSON reading fails this way (not UTF-8, too deep, too many digits), where invalid JSON
            # gets a 422.
            return JSONResponse({"detail": public_errors([unparsable_json(exc.__cause__)])}, status_code=422)
        detail = bounded_text(exc.detail, DETAIL_CHARS) if isinstance(exc.detail, str) else exc.detail
        if exc.status_code == 400 and isinstance(exc.__context__, MultiPartException):
            detail = multipart_hint(detail, route)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

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
    # Reached only by an exception from outside UnexpectedErrorMiddleware (which answers all the others).
    app.add_exception_handler(Exception, unexpected)


def _document_non_json_bodies(app: FastAPI) -> None:
    """Documents the 415 that a body sent as anything but JSON gets, on each operation that takes JSON."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for path_item in document["paths"].values():
                for operation in path_item.values():
                    if "application/json" in operation.get("requestBody", {}).get("content", {}):
                        operation["responses"].setdefault("415", NOT_JSON_RESPONSE)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document


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
    _document_non_json_bodies(app)
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
    app.add_middleware(UnexpectedErrorMiddleware)  # inside the request id's: the 500 and its log line carry it
    app.add_middleware(RequestIdMiddleware)
    return app
