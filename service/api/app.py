"""The FastAPI application: routes, and the one table that maps domain errors to HTTP answers."""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.types import ASGIApp, Receive, Scope, Send

from models.checkpoints import CheckpointError
from models.preprocessing import CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImage
from service.api.routes import health, jobs, models, predict, sweeps
from service.api.routes.predict import ImageCountError
from service.api.uploads import MULTIPART_OVERHEAD, UploadTooLarge
from service.db import Database
from service.predictor import Predictor
from service.queue import JobNotCancellable, JobNotFound, SweepNotFound
from service.registry import AliasNotFound, InvalidAliasName, ModelInUse, ModelNotFound, NoModelYet
from service.settings import Settings, get_settings
from service.sweeps import InvalidSpec
from service.wakeup import QueueSignal

log = logging.getLogger(__name__)

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
}


class BodySizeLimit:
    """Refuses a request whose declared Content-Length is over the limit before its body is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                response = JSONResponse(
                    {"detail": f"the request body is larger than the limit of {self.limit} bytes"}, status_code=413
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _json_safe(value: object) -> object:
    """JSON has no NaN or Infinity: echo such inputs back as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _register_error_handlers(app: FastAPI) -> None:
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

    def database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse({"detail": "the database is unavailable or not migrated; see /readyz"}, status_code=503)

    def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    app.add_exception_handler(CheckpointError, checkpoint_error)
    app.add_exception_handler(OperationalError, database_unavailable)
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
        title="fmnist-service",
        version="0.1.0",
        summary="Train multilayer perceptrons on Fashion-MNIST and serve their predictions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = Database(settings.sqlalchemy_url)
    app.state.predictor = Predictor(settings, app.state.db)
    app.state.queue_signal = QueueSignal(settings.queue_signal_path)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(sweeps.router)
    app.include_router(models.router)
    app.include_router(predict.router)
    _register_error_handlers(app)
    app.add_middleware(
        BodySizeLimit, limit=max(settings.max_request_bytes, settings.max_upload_bytes + MULTIPART_OVERHEAD)
    )
    return app
