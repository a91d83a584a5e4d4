"""The Python client of the HTTP API (httpx): importing it loads neither SQLAlchemy nor torch nor numpy.

from service.client import Client
"""

from service.client.client import (
    DEFAULT_URL,
    ApiError,
    Client,
    ClientError,
    Conflict,
    EndEvent,
    EpochEvent,
    Forbidden,
    InvalidRequest,
    NotFound,
    PredictionFailedPublic,
    PredictionPublic,
    PredictPublic,
    RateLimited,
    ServerError,
    ServerUnreachable,
    StatusEvent,
    Unauthorized,
    WaitTimeout,
)

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "Client",
    "ClientError",
    "Conflict",
    "EndEvent",
    "EpochEvent",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "PredictPublic",
    "PredictionFailedPublic",
    "PredictionPublic",
    "RateLimited",
    "ServerError",
    "ServerUnreachable",
    "StatusEvent",
    "Unauthorized",
    "WaitTimeout",
]
