"""Typed dependencies for routes: the app's settings, database, artifact store and predictor.

They are `async` because they only read app state: FastAPI runs a plain `def` dependency in its thread
pool, which would cost every request a thread hand-off per dependency.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from service.jobs.wakeup import QueueSignal
from service.serving.predictor import Predictor
from service.settings import Settings
from service.store.artifacts import ArtifactStore
from service.store.db import Database


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


async def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts  # type: ignore[no-any-return]


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor  # type: ignore[no-any-return]


async def get_queue_signal(request: Request) -> QueueSignal:
    return request.app.state.queue_signal  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
QueueSignalDep = Annotated[QueueSignal, Depends(get_queue_signal)]

# Past the databases' 64-bit integers an offset is a driver error, not an empty page.
MAX_OFFSET = 2**63 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]
