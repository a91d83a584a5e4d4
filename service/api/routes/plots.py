"""Figures: a job's training curves, several jobs compared, a model's predictions on test images, and the
activation functions, as SVG (or PNG) for pages, notebooks and READMEs.

Each figure carries an ETag computed from what it is drawn from, and ``Cache-Control: no-cache``: a
client revalidates, and gets a 304 without a render while the data stands still (a finished job's figure
never changes). Rendering runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import torch
from fastapi import APIRouter, Query, Request, Response
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from models.data import CLASS_NAMES, DatasetUnavailable, load_fashion_mnist, locate_idx_files
from models.spec import TrainingSpec
from service import plots, registry
from service.api.deps import DatabaseDep, PredictorDep, SettingsDep
from service.api.routes.models import ModelRef
from service.errors import JobNotFound, ServiceUnavailable
from service.jobs import queries as jobs
from service.schemas import ErrorPublic
from service.serving import evaluation as evaluations
from service.serving.card import summarise
from service.settings import Settings

log = logging.getLogger(__name__)

# Two routers, one per scope: job figures need `train`, model and activation figures `predict`.
train_router = APIRouter(prefix="/v1", tags=["figures"])
predict_router = APIRouter(prefix="/v1", tags=["figures"])

MAX_COMPARED = 12
MAX_SAMPLES = 36
DEFAULT_SAMPLES = 18
REVALIDATE = "no-cache"
FOREVER = "max-age=31536000, immutable"


def documented(media_type: str, errors: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The figure's media type for a 200 and a 304; JSON errors. (FastAPI gives an error the response class's
    media type when the route names one, so the routes name none and the figure's is documented here.)"""
    # `format: binary` for the image bytes too (OpenAPI 3.0's way; 3.1 tools read `contentMediaType`). SVG is text.
    schema: dict[str, Any] = {"type": "string", "contentMediaType": media_type}
    if media_type != plots.MEDIA_TYPES["svg"]:
        schema["format"] = "binary"
    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "The figure.", "content": {media_type: {"schema": schema}}},
        304: {"description": "The figure is the one the request's If-None-Match names."},
    }
    for status, description in (errors or {}).items():
        responses[status] = {"model": ErrorPublic, "description": description}
    return responses


NO_JOB = {404: "No job with this id."}
SVG, PNG = plots.MEDIA_TYPES["svg"], plots.MEDIA_TYPES["png"]

# Documented as a pattern so that clients (and the fuzz test) know the rule; checked by the validator, whose
# messages say which part of it a value breaks.
_JOB_IDS_PATTERN = rf"^[^,]{{1,64}}(,[^,]{{1,64}}){{0,{MAX_COMPARED - 1}}}$"


def _check_job_ids(value: str) -> str:
    ids = value.split(",")
    if len(ids) > MAX_COMPARED:
        raise ValueError(f"at most {MAX_COMPARED} jobs can be compared; got {len(ids)}")
    if any(not 1 <= len(job_id) <= 64 for job_id in ids):
        raise ValueError("job ids are 1-64 characters each, separated by commas")
    return value


JobIds = Annotated[
    str,
    Query(
        alias="jobs",
        description=f"1 to {MAX_COMPARED} job ids, comma-separated.",
        json_schema_extra={"pattern": _JOB_IDS_PATTERN},
    ),
    AfterValidator(_check_job_ids),
]
SampleCount = Annotated[
    int, Query(ge=1, le=MAX_SAMPLES, description=f"How many test images: 1-{MAX_SAMPLES}, 9 to a row.")
]


@train_router.get("/jobs/{job_id}/curves.svg", response_class=Response, responses=documented(SVG, NO_JOB))
def job_curves_svg(job_id: str, db: DatabaseDep, request: Request) -> Response:
    """A job's training curves, d2l style: train loss, train and test accuracy per epoch; grows while it runs."""
    return _job_curves(job_id, db, request, "svg")


@train_router.get("/jobs/{job_id}/curves.png", response_class=Response, responses=documented(PNG, NO_JOB))
def job_curves_png(job_id: str, db: DatabaseDep, request: Request) -> Response:
    """The same training curves as a PNG image."""
    return _job_curves(job_id, db, request, "png")


def _job_curves(job_id: str, db: DatabaseDep, request: Request, fmt: plots.Format) -> Response:
    job, rows = jobs.get_metrics(db, job_id)
    spec = TrainingSpec.model_validate(job.spec)
    title = summarise(spec)
    etag = _etag("curves", fmt, title, spec.epochs, [_row_values(row) for row in rows])
    return _figure(
        request, etag, fmt, REVALIDATE, lambda: plots.training_curves(rows, epochs=spec.epochs, title=title, fmt=fmt)
    )


@train_router.get(
    "/compare.svg",
    response_class=Response,
    responses=documented(SVG, {404: "Some of the jobs do not exist; the answer names them."}),
)
def compare_svg(job_ids: JobIds, db: DatabaseDep, request: Request) -> Response:
    """Several jobs' train loss and test accuracy on one figure, labelled by what differs between their specs."""
    ids = list(dict.fromkeys(job_ids.split(",")))  # a job named twice is drawn once
    found, missing = [], []
    for job_id in ids:
        try:
            found.append(jobs.get_metrics(db, job_id))
        except JobNotFound:
            missing.append(job_id)
    if missing:
        raise JobNotFound(*missing)
    specs = [{**job.spec, "seed": job.seed} for job, _ in found]
    labels = plots.distinguishing_labels(specs, [job.id for job, _ in found])
    runs = [plots.Run(label, rows, int(job.spec["epochs"])) for label, (job, rows) in zip(labels, found, strict=True)]
    etag = _etag("compare", [(run.label, run.epochs, [_row_values(row) for row in run.rows]) for run in runs])
    return _figure(request, etag, "svg", REVALIDATE, lambda: plots.comparison(runs))


@predict_router.get(
    "/models/{model_ref}/samples.svg",
    response_class=Response,
    responses=documented(
        SVG,
        {
            404: "No model or alias with this name.",
            503: "The server has no Fashion-MNIST test set to draw the images from.",
        },
    ),
)
async def model_samples_svg(
    model_ref: ModelRef,
    db: DatabaseDep,
    settings: SettingsDep,
    predictor: PredictorDep,
    request: Request,
    n: SampleCount = DEFAULT_SAMPLES,
) -> Response:
    """The first test images with their true label over the model's prediction, mistakes in red (d2l's predict_ch3)."""
    model = await run_in_threadpool(registry.get_model, db, model_ref)
    test_set = await run_in_threadpool(_test_set, settings)
    etag = _etag("samples", model.id, model.sha256, n, test_set.sha256)
    if _matches(request, etag):
        return _not_modified(etag, REVALIDATE)
    images = test_set.images[:n]
    # The predictor's model cache and batching, as /v1/predict uses them: the checkpoint is loaded once.
    _, predictions = await predictor.predict(model.id, top_k=1, images=images)
    samples = [
        plots.Sample(image.numpy(), CLASS_NAMES[label], prediction.best.class_name)
        for image, label, prediction in zip(images, test_set.labels[: len(images)], predictions, strict=True)
    ]
    right = sum(sample.correct for sample in samples)
    title = f"model {model.id[:8]}: {right} of {len(samples)} right"
    body = await run_in_threadpool(plots.sample_grid, samples, title=title)
    return Response(body, media_type=SVG, headers={"ETag": etag, "Cache-Control": REVALIDATE})


EVALUATION_ERRORS = {
    404: "No model or alias with this name.",
    503: "A model trained before evaluations were stored, and no Fashion-MNIST data on the server to evaluate it.",
}


@predict_router.get(
    "/models/{model_ref}/confusion.svg", response_class=Response, responses=documented(SVG, EVALUATION_ERRORS)
)
def model_confusion_svg(model_ref: ModelRef, db: DatabaseDep, settings: SettingsDep, request: Request) -> Response:
    """The model's confusion matrix on the test split: counts in the cells, colours by share of the true class."""
    model, evaluation = evaluations.model_evaluation(db, settings, model_ref)
    etag = _etag("confusion", model.id, evaluations.evaluation_digest(evaluation))
    title = f"model {model.id[:8]}: test accuracy {evaluation['accuracy']:.2%}"
    return _figure(
        request,
        etag,
        "svg",
        REVALIDATE,
        lambda: plots.confusion_matrix(evaluation["confusion_matrix"], CLASS_NAMES, title=title),
    )


@predict_router.get(
    "/models/{model_ref}/calibration.svg", response_class=Response, responses=documented(SVG, EVALUATION_ERRORS)
)
def model_calibration_svg(model_ref: ModelRef, db: DatabaseDep, settings: SettingsDep, request: Request) -> Response:
    """The model's reliability diagram on the test split: accuracy against confidence in 15 bins, the diagonal,
    the bins' counts, and the expected calibration error (ECE) in the title."""
    model, evaluation = evaluations.model_evaluation(db, settings, model_ref)
    etag = _etag("calibration", model.id, evaluations.evaluation_digest(evaluation))
    bins, ece = evaluation["calibration"]["bins"], evaluation["ece"]
    title = f"model {model.id[:8]}"
    return _figure(request, etag, "svg", REVALIDATE, lambda: plots.reliability_diagram(bins, ece, title=title))


@predict_router.get(
    "/models/{model_ref}/mistakes.svg",
    response_class=Response,
    responses=documented(
        SVG,
        {
            404: "No model or alias with this name.",
            503: "The server has no Fashion-MNIST test set to draw the images from.",
        },
    ),
)
def model_mistakes_svg(
    model_ref: ModelRef, db: DatabaseDep, settings: SettingsDep, request: Request, n: SampleCount = DEFAULT_SAMPLES
) -> Response:
    """The test images the model got wrong with the highest confidence: true label over the predicted one and
    its probability (d2l's predict_ch3, for mistakes)."""
    model, evaluation = evaluations.model_evaluation(db, settings, model_ref)
    test_split = evaluations.test_split(settings)
    mistakes = evaluation["mistakes"][:n]
    etag = _etag("mistakes", model.id, mistakes, test_split.sha256)

    def render() -> bytes:
        shown = [
            plots.Mistake(
                test_split.images[m["index"]].numpy(),
                CLASS_NAMES[m["true_class_id"]],
                CLASS_NAMES[m["predicted_class_id"]],
                m["probability"],
            )
            for m in mistakes
            if m["index"]
            < len(test_split.images)  # a test set other than the one evaluated on: drawn as far as it goes
        ]
        confusion = evaluation["confusion_matrix"]
        wrong = sum(map(sum, confusion)) - sum(confusion[i][i] for i in range(len(confusion)))
        title = f"model {model.id[:8]}: the {len(shown)} most confident of {wrong} mistakes"
        return plots.mistake_grid(shown, title=title)

    return _figure(request, etag, "svg", REVALIDATE, render)


@predict_router.get("/activations.svg", response_class=Response, responses=documented(SVG))
def activations_svg(request: Request) -> Response:
    """ReLU, sigmoid and tanh with their gradients (from autograd), as the chapter plots them."""
    body = plots.activations("svg")
    return _figure(request, _etag("activations", hashlib.sha256(body).hexdigest()), "svg", FOREVER, lambda: body)


def _row_values(row: plots.EpochRow) -> tuple[Any, ...]:
    return (row.epoch, row.train_loss, row.train_acc, row.test_acc, row.val_acc)


def _etag(*parts: Any) -> str:
    """A strong ETag from what a figure is drawn from, and from how this code draws it."""
    key = json.dumps([plots.FIGURE_VERSION, matplotlib.__version__, *parts], default=str)
    return f'"{hashlib.sha256(key.encode()).hexdigest()[:32]}"'


def _matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _not_modified(etag: str, cache_control: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})


def _figure(
    request: Request, etag: str, fmt: plots.Format, cache_control: str, render: Callable[[], bytes]
) -> Response:
    """The figure ``render`` draws, or a 304 without drawing it when the client holds this version."""
    if _matches(request, etag):
        return _not_modified(etag, cache_control)
    return Response(render(), media_type=plots.MEDIA_TYPES[fmt], headers={"ETag": etag, "Cache-Control": cache_control})


@dataclass(frozen=True)
class TestSet:
    """The first test images (uint8, (N, 28, 28)) and their labels, and the test files' digest."""

    images: torch.Tensor
    labels: list[int]
    sha256: str


_test_sets: dict[Path, TestSet] = {}
_test_sets_lock = threading.Lock()


def _test_set(settings: Settings) -> TestSet:
    """The first test images, read once per data folder and kept: the API process holds 36 images, not 70,000.

    The data folder, else the cache where a worker with FMNIST_DOWNLOAD=1 put the files it fetched.
    """
    folder = next(
        (path for path in (settings.data_dir, settings.dataset_cache_dir) if path and locate_idx_files(path)), None
    )
    if folder is None:
        raise ServiceUnavailable("no Fashion-MNIST test set on this server: set FMNIST_DATA_DIR to draw sample images")
    with _test_sets_lock:
        if folder not in _test_sets:
            try:
                arrays = load_fashion_mnist(folder, settings.dataset_cache_dir)
            except DatasetUnavailable as exc:
                log.error("sample images: %s", exc)
                raise ServiceUnavailable("the Fashion-MNIST files on this server could not be read") from exc
            digest = hashlib.sha256(
                json.dumps({name: sha for name, sha in arrays.file_sha256.items() if name.startswith("t10k")}).encode()
            ).hexdigest()
            _test_sets[folder] = TestSet(
                arrays.test_images[:MAX_SAMPLES].clone(), arrays.test_labels[:MAX_SAMPLES].tolist(), digest
            )
        return _test_sets[folder]
