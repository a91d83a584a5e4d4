"""Predictions from trained checkpoints: uploaded images, or raw pixel arrays.

Uploads are answered image by image: an image that cannot be used (corrupt, not an image, too large) gets an
`error` in its entry and the others their predictions, in a 200 answer. Only when no image at all could be
used is the answer an error: the first image's status, as if it had come alone, with the same entries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from service.api.deps import PredictorDep
from service.api.errors import DETAIL_CHARS, INTERNAL_ERROR, bounded_text, status_and_code
from service.api.uploads import read_upload
from service.errors import ImageCountError, UploadTooLarge
from service.schemas import (
    ClassProbabilityPublic,
    ErrorPublic,
    ImageErrorPublic,
    PredictionFailedPublic,
    PredictionPublic,
    PredictPublic,
    PredictRefusedPublic,
    ValidationErrorsPublic,
    image_location,
)
from service.serving.predictor import ImageOutcome, Prediction, Predictor
from service.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["predict"])

MAX_TOP_K = 10
DEFAULT_TOP_K = 3
MAX_ARRAYS = 256
MODEL_MAX_LENGTH = 64
# A raw-body upload (`Content-Type: image/png`, the TorchServe and KServe habit): the body is the image. Its
# content decides its format, as for a multipart upload (a GIF sent as image/png is read as a GIF).
RAW_IMAGE_TYPES = ("image/png", "image/jpeg")

# The answers that concern the whole request, whichever form the images come in.
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "No model or alias with this name."},
    409: {"model": ErrorPublic, "description": "No model trained yet."},
}
# An image's own problem is the answer's status only when no image could be used: then it is the first one's.
NONE_USABLE = "No image could be used, the first one being"
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorPublic | PredictRefusedPublic,
        "description": f"{NONE_USABLE} empty, truncated or corrupt; or the multipart body is malformed.",
    },
    413: {
        "model": ErrorPublic | PredictRefusedPublic,
        "description": f"The body is over its limit; or {NONE_USABLE.lower()} over the size or pixel limit.",
    },
    415: {"model": PredictRefusedPublic, "description": f"{NONE_USABLE} in a format the service does not read."},
}

ModelQuery = Annotated[
    str | None,
    Query(
        max_length=MODEL_MAX_LENGTH,
        description="Model id or alias; default: the `production` alias, else the newest model.",
    ),
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
# One of the two fields, at least, carries the images; or the body is one image.
IMAGES_REQUIRED: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"anyOf": [{"required": ["file"]}, {"required": ["files"]}]}},
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_IMAGE_TYPES},
        },
    }
}

Row = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=28, max_length=28)]
PixelImage = Annotated[list[Row], Field(min_length=28, max_length=28)]


class PixelsCreate(BaseModel):
    """Images as 28x28 arrays of 0-255 grey levels, Fashion-MNIST style (light garment on black), used as-is."""

    model_config = ConfigDict(extra="forbid")

    images: list[PixelImage] = Field(min_length=1, max_length=MAX_ARRAYS)


def image_error(exc: Exception, index: int, filename: str | None) -> ImageErrorPublic:
    """Why the image at ``index`` could not be classified; an unexpected error is logged and is a 500."""
    where = image_location(index, filename)
    answer = status_and_code(exc)
    if answer is None:
        log.error("classifying %s failed", where, exc_info=exc)
        return ImageErrorPublic(status=500, type="internal_error", detail=f"{where}: {INTERNAL_ERROR}")
    status, code = answer
    # The message may quote the upload (a decoder's complaint): bounded like any error's detail.
    detail = bounded_text(f"{where}: {exc}", DETAIL_CHARS)
    return ImageErrorPublic(status=status, type=code, detail=detail)


def _public(
    model_id: str, outcomes: Sequence[ImageOutcome], filenames: list[str | None] | None = None
) -> PredictPublic:
    items: list[PredictionPublic | PredictionFailedPublic] = []
    failed = 0
    for index, outcome in enumerate(outcomes):
        filename = filenames[index] if filenames is not None else None
        if isinstance(outcome, Prediction):
            best = outcome.best
            items.append(
                PredictionPublic(
                    index=index,
                    filename=filename,
                    class_id=best.class_id,
                    class_name=best.class_name,
                    probability=best.probability,
                    top_k=[ClassProbabilityPublic(**vars(c)) for c in outcome.top_k],
                )
            )
        else:
            failed += 1
            error = image_error(outcome, index, filename)
            items.append(PredictionFailedPublic(index=index, filename=filename, error=error))
    return PredictPublic(model_id=model_id, predictions=items, failed=failed)


def is_raw_image(content_type: str) -> bool:
    """Whether a request's ``Content-Type`` says its body is one image (`image/png`, `image/jpeg`)."""
    return content_type.partition(";")[0].strip().lower() in RAW_IMAGE_TYPES


def check_image_count(count: int, settings: Settings) -> None:
    """Raises ImageCountError for a request with no image or more than FMNIST_MAX_PREDICT_FILES."""
    if not count:
        raise ImageCountError(
            "send the image in the multipart field `file` (or several in `files`), "
            "or as the body with `Content-Type: image/png` or `image/jpeg`"
        )
    if count > settings.max_predict_files:
        raise ImageCountError(
            f"{count} images in one request; the limit is {settings.max_predict_files} (FMNIST_MAX_PREDICT_FILES)"
        )


async def classify_uploads(
    predictor: Predictor,
    settings: Settings,
    contents: Sequence[bytes | Exception],
    filenames: list[str | None],
    model: str | None,
    top_k: int,
) -> PredictPublic:
    """The answer for uploaded images (each its bytes, or the exception that says why it could not be read),
    in order, whichever way they came (multipart on either path, or a raw body). Raises ImageCountError, and
    what concerns the whole request (`ModelNotFound`, `NoModelYet`, `CheckpointError`...)."""
    check_image_count(len(contents), settings)
    limit = settings.max_upload_bytes
    encoded = [UploadTooLarge(limit) if isinstance(data, bytes) and len(data) > limit else data for data in contents]
    model_id, outcomes = await predictor.predict(model, top_k, encoded=encoded)
    return _public(model_id, outcomes, filenames)


def render(answer: PredictPublic) -> tuple[int, bytes]:
    """An upload answer's status and JSON body: 200 while an image was classified, else the first image's
    status with the refusal (see `_refused`)."""
    if answer.failed < len(answer.predictions):
        return 200, answer.model_dump_json().encode()
    refused = _refused(answer)
    return refused.status_code, bytes(refused.body)


def _refused(answer: PredictPublic) -> JSONResponse:
    """The answer when no image could be used: the first image's status, as if it had been sent alone, and
    a `detail` quoting its error, beside every image's entry."""
    first = answer.predictions[0]
    assert isinstance(first, PredictionFailedPublic)
    others = len(answer.predictions) - 1
    detail = first.error.detail
    if others:
        them = "the other image" if others == 1 else f"the other {others} images"
        detail += f" (and {them} could not be used either: each entry of `predictions` says why)"
    refused = PredictRefusedPublic(
        detail=bounded_text(detail, DETAIL_CHARS),
        code=first.error.type,
        model_id=answer.model_id,
        predictions=answer.predictions,
        failed=answer.failed,
    )
    return JSONResponse(refused.model_dump(mode="json"), status_code=first.error.status)


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
        200: {"description": "At least one image was classified: one entry per image, in upload order."},
        **UPLOAD_ERRORS,
        **MODEL_ERRORS,
        # `detail` is a sentence for no image or too many, FastAPI's list of errors for a bad parameter.
        422: {
            "model": ErrorPublic | ValidationErrorsPublic | PredictRefusedPublic,
            "description": f"No image, too many, or a bad parameter; or {NONE_USABLE.lower()} an image with "
            "nothing to classify in it.",
        },
    },
    openapi_extra=IMAGES_REQUIRED,
)
async def predict(
    request: Request,
    predictor: PredictorDep,
    file: ImageFile = None,
    files: ImageFiles = None,
    model: ModelQuery = None,
    top_k: TopKQuery = DEFAULT_TOP_K,
) -> Response:
    """Classify uploaded images of garments, one entry per image in upload order (`file` first).

    The images come as multipart fields (`file`, and several in `files`), or as the whole body with
    `Content-Type: image/png` or `image/jpeg`. Each entry has the image's `index` and `filename`, and its
    prediction or, for an image that cannot be used (corrupt, not an image, too large...), an `error` with its
    `status`, `type` and `detail`; `failed` counts those. One bad image costs the others nothing: the answer
    is 200 while at least one image was classified. When none could be, it is the first image's error status
    (400, 413, 415, 422), with a `detail` and the same entries. Photos are brought to Fashion-MNIST's form
    first (see the README).
    """
    settings = predictor.settings
    # Most requests never get here: service/api/fast_predict.py answers them with the same functions.
    if is_raw_image(request.headers.get("content-type", "")):
        contents: list[bytes | Exception] = [await request.body()]
        filenames: list[str | None] = [None]
    else:
        uploads = ([file] if file is not None else []) + list(files or [])
        contents = []
        for upload in uploads:
            try:
                contents.append(await read_upload(upload, settings.max_upload_bytes))
            except UploadTooLarge as exc:  # that image's outcome alone
                contents.append(exc)
        filenames = [upload.filename for upload in uploads]
    answer = await classify_uploads(predictor, settings, contents, filenames, model, top_k)
    status, payload = render(answer)
    return Response(payload, status_code=status, media_type="application/json")


@router.post(
    "/predict/pixels",
    response_model=PredictPublic,
    responses={
        **MODEL_ERRORS,
        413: {"model": ErrorPublic, "description": "The body is over its limit."},
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
