"""Predictions from trained checkpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from models.preprocessing import preprocess_upload
from service.api.deps import PredictorDep, SettingsDep
from service.api.uploads import read_upload
from service.schemas import ClassProbabilityPublic, ErrorPublic, PredictionPublic, PredictPublic

router = APIRouter(prefix="/v1", tags=["predict"])

MAX_TOP_K = 10


@router.post(
    "/predict",
    response_model=PredictPublic,
    responses={
        400: {"model": ErrorPublic, "description": "Empty, truncated or corrupt image."},
        404: {"model": ErrorPublic, "description": "No model with this id."},
        409: {"model": ErrorPublic, "description": "No model trained yet."},
        413: {"model": ErrorPublic, "description": "Upload over the size or pixel limit."},
        415: {"model": ErrorPublic, "description": "Not a PNG or JPEG."},
    },
)
def predict(
    file: Annotated[UploadFile, File(description="A PNG or JPEG image: any size, grey, RGB or RGBA.")],
    predictor: PredictorDep,
    settings: SettingsDep,
    model: Annotated[str | None, Query(max_length=64, description="Model id; default: the newest model.")] = None,
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="How many classes to list per image.")] = 3,
) -> PredictPublic:
    """Classify an uploaded image of a garment. Photos are brought to Fashion-MNIST's form first."""
    image = preprocess_upload(read_upload(file, settings.max_upload_bytes), max_pixels=settings.max_image_pixels)
    model_id, predictions = predictor.predict([image], model, top_k)
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
