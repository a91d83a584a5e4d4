"""Predictions from trained checkpoints: uploaded images, or raw pixel arrays."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from fastapi import APIRouter, File, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from models.preprocessing import preprocess_upload
from service.api.deps import PredictorDep, SettingsDep
from service.api.uploads import read_upload
from service.predictor import Prediction
from service.schemas import ClassProbabilityPublic, ErrorPublic, PredictionPublic, PredictPublic

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


@router.post(
    "/predict", response_model=PredictPublic, responses={**ERRORS, 422: {"description": "No image, or too many."}}
)
def predict(
    predictor: PredictorDep,
    settings: SettingsDep,
    file: Annotated[UploadFile | None, File(description="A PNG or JPEG image: any size, grey, RGB or RGBA.")] = None,
    files: Annotated[
        list[UploadFile] | None, File(description="Several images in one request (FMNIST_MAX_PREDICT_FILES at most).")
    ] = None,
    model: ModelQuery = None,
    top_k: TopKQuery = 3,
) -> PredictPublic:
    """Classify uploaded images of garments, one prediction per image in upload order.

    Photos are brought to Fashion-MNIST's form first (see the README).
    """
    uploads = ([file] if file is not None else []) + list(files or [])
    if not uploads:
        raise ImageCountError("send the image in the multipart field `file` (or several in `files`)")
    if len(uploads) > settings.max_predict_files:
        raise ImageCountError(
            f"{len(uploads)} images in one request; "
            f"the limit is {settings.max_predict_files} (FMNIST_MAX_PREDICT_FILES)"
        )
    images = [
        preprocess_upload(read_upload(upload, settings.max_upload_bytes), max_pixels=settings.max_image_pixels)
        for upload in uploads
    ]
    return _public(*predictor.predict(images, model, top_k))


@router.post("/predict/pixels", response_model=PredictPublic, responses={**ERRORS})
def predict_pixels(
    body: PixelsCreate, predictor: PredictorDep, model: ModelQuery = None, top_k: TopKQuery = 3
) -> PredictPublic:
    """Classify raw 28x28 pixel arrays (up to 256 per request), for programmatic clients."""
    images = list(torch.tensor(body.images, dtype=torch.uint8))
    return _public(*predictor.predict(images, model, top_k))
