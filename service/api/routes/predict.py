"""Predictions from trained checkpoints: uploaded images, or raw pixel arrays."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from service.api.deps import PredictorDep
from service.api.uploads import read_upload
from service.predictor import Prediction
from service.schemas import (
    ClassProbabilityPublic,
    ErrorPublic,
    PredictionPublic,
    PredictPublic,
    ValidationErrorsPublic,
)

router = APIRouter(prefix="/v1", tags=["predict"])

MAX_TOP_K = 10
MAX_ARRAYS = 256

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorPublic, "description": "Empty, truncated or corrupt image."},
    404: {"model": ErrorPublic, "description": "No model or alias with this name."},
    409: {"model": ErrorPublic, "description": "No model trained yet."},
    413: {"model": ErrorPublic, "description": "Upload over the size or pixel limit."},
    415: {"model": ErrorPublic, "description": "Not a PNG or JPEG."},
}

ModelQuery = Annotated[
    str | None,
    Query(max_length=64, description="Model id or alias; default: the `production` alias, else the newest model."),
]
TopKQuery = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="How many classes to list per image.")]

# A multipart field is a file or absent, never null: document it so (FastAPI would write `anyOf: [file, null]`
# for the optional parameter, which tells a client, or a fuzzer, to send a plain `null` text field).
BINARY: dict[str, Any] = {"type": "string", "contentMediaType": "application/octet-stream"}
ImageFile = Annotated[
    UploadFile | None,
    File(description="A PNG or JPEG image: any size, grey, RGB or RGBA."),
    WithJsonSchema(BINARY),
]
ImageFiles = Annotated[
    list[UploadFile] | None,
    File(description="Several images in one request (FMNIST_MAX_PREDICT_FILES at most)."),
    WithJsonSchema({"type": "array", "items": BINARY, "minItems": 1}),
]
# One of the two fields, at least, carries the images.
IMAGES_REQUIRED: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"anyOf": [{"required": ["file"]}, {"required": ["files"]}]}}},
    }
}

Row = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=28, max_length=28)]
PixelImage = Annotated[list[Row], Field(min_length=28, max_length=28)]


class ImageCountError(ValueError):
    """No image, or more than a request may carry."""


class PixelsCreate(BaseModel):
    """Images as 28x28 arrays of 0-255 grey levels, Fashion-MNIST style (light garment on black), used as-is."""

    model_config = ConfigDict(extra="forbid")

    images: list[PixelImage] = Field(min_length=1, max_length=MAX_ARRAYS)


def _public(model_id: str, predictions: list[Prediction]) -> PredictPublic:
    return PredictPublic(
        model_id=model_id,
        predictions=[
            PredictionPublic(
                class_id=p.best.class_id,
                class_name=p.best.class_name,
                probability=p.best.probability,
                top_k=[ClassProbabilityPublic(**vars(c)) for c in p.top_k],
            )
            for p in predictions
        ],
    )


def _located(error: Any) -> dict[str, Any]:
    """A pydantic error in FastAPI's form: located in the body, without echoing a whole malformed body."""
    located = {**error, "loc": ("body", *error["loc"])}
    if error["type"] == "json_invalid":
        located.pop("input", None)
    return located


def parse_pixels(body: bytes) -> torch.Tensor:
    """The images of a `PixelsCreate` JSON body, checked by pydantic straight from the bytes (several times
    faster than through Python lists) and turned into tensors by numpy."""
    try:
        images = PixelsCreate.model_validate_json(body).images
    except ValidationError as exc:
        raise RequestValidationError([_located(error) for error in exc.errors(include_url=False)]) from None
    return torch.from_numpy(np.asarray(images, dtype=np.uint8))


@router.post(
    "/predict",
    response_model=PredictPublic,
    responses={
        **ERRORS,
        # `detail` is a sentence for no image or too many, FastAPI's list of errors for a bad parameter.
        422: {"model": ErrorPublic | ValidationErrorsPublic, "description": "No image, too many, or a bad parameter."},
    },
    openapi_extra=IMAGES_REQUIRED,
)
async def predict(
    predictor: PredictorDep,
    file: ImageFile = None,
    files: ImageFiles = None,
    model: ModelQuery = None,
    top_k: TopKQuery = 3,
) -> PredictPublic:
    """Classify uploaded images of garments, one prediction per image in upload order.

    Photos are brought to Fashion-MNIST's form first (see the README).
    """
    settings = predictor.settings
    uploads = ([file] if file is not None else []) + list(files or [])
    if not uploads:
        raise ImageCountError("send the image in the multipart field `file` (or several in `files`)")
    if len(uploads) > settings.max_predict_files:
        raise ImageCountError(
            f"{len(uploads)} images in one request; "
            f"the limit is {settings.max_predict_files} (FMNIST_MAX_PREDICT_FILES)"
        )
    encoded = [await read_upload(upload, settings.max_upload_bytes) for upload in uploads]
    return _public(*await predictor.predict(model, top_k, encoded=encoded))


@router.post(
    "/predict/pixels",
    response_model=PredictPublic,
    responses={
        **ERRORS,
        422: {"model": ValidationErrorsPublic, "description": "Not 1 to 256 arrays of 28x28 integers in 0..255."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PixelsCreate.model_json_schema()}},
        }
    },
)
async def predict_pixels(
    request: Request, predictor: PredictorDep, model: ModelQuery = None, top_k: TopKQuery = 3
) -> PredictPublic:
    """Classify raw 28x28 pixel arrays (up to 256 per request), for programmatic clients.

    The body is a `PixelsCreate` object: `{"images": [[[0, 12, ...], ...], ...]}`.
    """
    images = await run_in_threadpool(parse_pixels, await request.body())
    return _public(*await predictor.predict(model, top_k, images=images))
