"""The Python client of the HTTP API (httpx): importing it loads neither SQLAlchemy nor torch nor numpy.

    from service.client import Client, NotFound

An error answer is raised as the class of ``service.errors`` its ``code`` names (``JobNotFound``...); the
families below are what callers usually catch.
"""

from service.client.client import DEFAULT_URL, Client, EndEvent, EpochEvent, JobEvent, StatusEvent
from service.client.errors import ApiError, ClientError, ServerUnreachable, WaitTimeout
from service.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    JobNotFound,
    ModelNotFound,
    NotFound,
    RateLimited,
    ServerError,
    ServiceError,
    Unauthorized,
)
from service.schemas import PredictionFailedPublic, PredictionPublic, PredictPublic

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
    "JobEvent",
    "JobNotFound",
    "ModelNotFound",
    "NotFound",
    "PredictPublic",
    "PredictionFailedPublic",
    "PredictionPublic",
    "RateLimited",
    "ServerError",
    "ServerUnreachable",
    "ServiceError",
    "StatusEvent",
    "Unauthorized",
    "WaitTimeout",
]
