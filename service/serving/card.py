"""A model's card: what it is, how it was made, how well it does, what it takes as input and where it is
known to fall short, in one document (GET /v1/models/{ref}/card, ``fmnist card``, the dashboard's model page).

Everything comes from what is already recorded: the model's row and its evaluation (service/serving/evaluation.py,
evaluated here on first request for a model trained before evaluations were stored), its job's row (seed, attempts,
provenance, training time) and, for a study's trial, the trial's number. The input contract follows
models/preprocessing.py; the known limits are the measurements of ``bench.upload_accuracy`` (``UPLOAD_ACCURACY``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from models.data import CLASS_NAMES
from models.preprocessing import ACCEPTED_FORMATS, SIZE
from models.spec import TrainingSpec
from service import registry
from service.errors import JobNotFound
from service.serving import evaluation as evaluations
from service.settings import Settings
from service.store.db import Database
from service.store.tables import Job, Model, StudyTrial


def summarise(spec: TrainingSpec) -> str:
    """The architecture and recipe in one line: '784-256-10 relu, sgd lr 0.1, 10 epochs'."""
    layers = "-".join(str(width) for width in spec.layer_sizes)
    return f"{layers} {spec.activation.value}, {spec.optimizer.value} lr {spec.lr:g}, {spec.epochs} epochs"


@dataclass(frozen=True)
class UploadAccuracy:
    """One kind of upload in bench.upload_accuracy: accuracy on the first 2,000 test images made into such files."""

    upload: str
    accuracy: float
    change: float | None  # accuracy minus the 28x28 PNG's; None for the tensors themselves
    agreement: float  # share of images predicted as their test tensor is


# Measured by `python -m bench.upload_accuracy` (the default recipe, 784-256-10 ReLU, SGD lr 0.1, 10 epochs, seed
# 0, on the first 2,000 test images, CPU), as the README reports them under Benchmarks, "Uploads as people make
# them (CPU)". A measurement of the preprocessing with that recipe, not of each model: rerun the bench and update
# both together.
UPLOAD_ACCURACY_SOURCE = "bench.upload_accuracy; README, Benchmarks, 'Uploads as people make them (CPU)'"
UPLOAD_ACCURACY_SETUP = (
    "the default recipe (784-256-10 relu, sgd lr 0.1, 10 epochs, seed 0), the first 2,000 test images, each made "
    "into the file and passed through the service's preprocessing; measured once for that recipe, not for this model"
)
UPLOAD_ACCURACY: tuple[UploadAccuracy, ...] = (
    UploadAccuracy("the test tensors themselves", 0.8570, None, 1.0000),
    UploadAccuracy("28x28 PNG of the test image", 0.8570, +0.0000, 1.0000),
    UploadAccuracy("dark on white, 320x320 RGB JPEG q90", 0.8395, -0.0175, 0.9400),
    UploadAccuracy("dark on white, 320x320 RGB JPEG q15", 0.8415, -0.0155, 0.9365),
    UploadAccuracy("RGBA cut-out, transparent background", 0.8330, -0.0240, 0.9310),
    UploadAccuracy("off-centre on a 900x400 canvas", 0.8335, -0.0235, 0.9330),
    UploadAccuracy("sideways JPEG with EXIF orientation 6", 0.8320, -0.0250, 0.9330),
    UploadAccuracy("palette PNG (P mode)", 0.8465, -0.0105, 0.9455),
    UploadAccuracy("16-bit grey PNG", 0.8465, -0.0105, 0.9455),
    UploadAccuracy("dark on white, 320x320 RGB WebP q80", 0.8415, -0.0155, 0.9400),
    UploadAccuracy("28x28 GIF of the test image", 0.8570, +0.0000, 1.0000),
    UploadAccuracy("light garment (190-254) cut-out, 200x200 RGBA", 0.8350, -0.0220, 0.9330),
    UploadAccuracy("28x28 LA: white, the garment only in the alpha", 0.8570, +0.0000, 1.0000),
    UploadAccuracy("28x28 PNG at a quarter of the brightness", 0.8570, +0.0000, 0.9985),
    UploadAccuracy("16-bit PNG with 12-bit data (0-4095)", 0.8460, -0.0110, 0.9460),
    UploadAccuracy("28x28 16-bit PNG holding 8-bit values (0-255)", 0.8570, +0.0000, 1.0000),
)
# What the README says the numbers and the preprocessing's tests show, in words.
KNOWN_LIMITS = (
    "Photos, cut-outs and rotated files lose 1 to 2.5 points of accuracy against the test images themselves: the "
    "garment is scaled up and back down, and is a mid-tone colour, not black.",
    "A light garment's shading is read as 'lighter is more garment': a white shirt whose folds are its darker parts "
    "comes out with the folds dark (on white, Fashion-MNIST would have shown them bright).",
    "An image in which nothing stands out (one colour, fully transparent, faint noise over a large page) is refused "
    "with 422 rather than given a class; a small image of strong noise still gets one, as does a single dark line.",
    f"Every answer is one of the ten Fashion-MNIST classes ({', '.join(CLASS_NAMES)}): a picture of anything else "
    "still gets one of them.",
)

INPUT_STEPS = (
    "EXIF orientation applied; transparency filled in (a cut-out's alpha channel is its silhouette)",
    "converted to grey; levels stretched so that the darkest pixel is 0 and the lightest 255",
    "negated when the background is light (a product photo on white): the network saw light garments on black",
    f"cropped to the object, its longest side scaled to {SIZE} pixels with the aspect ratio kept, centred on "
    f"{SIZE}x{SIZE}, its brightest pixel at 255",
    f"read as floats in [0, 1] (pixel / 255), {SIZE * SIZE} per image",
)


def model_card(db: Database, settings: Settings, model_ref: str, *, tracking: bool = True) -> dict[str, Any]:
    """The card of the model ``model_ref`` names (an id or an alias), as plain data (schemas.ModelCardPublic).
    ``tracking``: whether to include the job's tags and note, which are the `train` scope's to read (a key that
    may only predict gets null). Raises ModelNotFound; for a model without a stored evaluation, what its
    evaluation raises (ServiceUnavailable without the data set here)."""
    model, evaluation = evaluations.model_evaluation(db, settings, model_ref)
    job, trial_number = _job_and_trial(db, model.job_id)
    spec = TrainingSpec.model_validate(model.spec)
    provenance = job.provenance or {}
    return {
        "model_id": model.id,
        "summary": summarise(spec),
        "aliases": registry.aliases_of(db, model.id),
        "created_at": model.created_at,
        "sha256": model.sha256,
        "size_bytes": model.size_bytes,
        "spec": spec,
        "parameters": spec.parameter_count,
        "kept_epoch": kept_epoch(model, spec, job),
        "evaluation": {**evaluation, "model_id": model.id},
        "lineage": {
            "job_id": job.id,
            "preset": job.preset,
            "sweep_id": job.sweep_id,
            "study_id": job.study_id,
            "trial_number": trial_number,
            "attempts": job.attempt,
            "max_attempts": job.max_attempts,
            "resumed_from_epoch": provenance.get("resumed_from_epoch"),
            "tags": (job.tags or {}) if tracking else None,
            "note": job.note if tracking else None,
            "submitted_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        },
        "provenance": {
            "seed": job.seed,
            "data_sha256": provenance.get("data_sha256") or {},
            "code_version": provenance.get("code_version"),
            "torch_version": provenance.get("torch"),
            "device": provenance.get("device") or job.device,
            "cuda_graphs": provenance.get("cuda_graphs"),
            "pack_size": provenance.get("pack_size", 1 if provenance else None),
            "train_seconds": job.train_seconds,
            "train_samples": provenance.get("train_samples"),
        },
        "input_contract": input_contract(settings),
        "known_limits": {
            "source": UPLOAD_ACCURACY_SOURCE,
            "setup": UPLOAD_ACCURACY_SETUP,
            "uploads": [vars(row) for row in UPLOAD_ACCURACY],
            "notes": list(KNOWN_LIMITS),
        },
    }


def kept_epoch(model: Model, spec: TrainingSpec, job: Job) -> dict[str, Any]:
    """Which epoch's weights the checkpoint holds, and why: with a validation split the trainer keeps the epoch
    with the best validation accuracy (models/training.py); without one, the last it trained."""
    return {
        "epoch": model.epoch,
        "reason": "validation" if spec.val_fraction > 0 else "last",
        "epochs_trained": job.epochs_done,
        "epochs_planned": spec.epochs,
        "test_acc": model.test_acc,
        "val_acc": model.val_acc,
    }


def input_contract(settings: Settings) -> dict[str, Any]:
    """What the network reads, and what an upload becomes first (models/preprocessing.py)."""
    return {
        "height": SIZE,
        "width": SIZE,
        "colour": "grey",
        "polarity": "a light garment on a dark background",
        "upload_steps": list(INPUT_STEPS),
        "formats": sorted(ACCEPTED_FORMATS),
        "max_upload_bytes": settings.max_upload_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "pixels": (
            f"POST /v1/predict/pixels takes {SIZE}x{SIZE} arrays of 0-255 as they are, without this preprocessing: "
            "a light garment on black"
        ),
    }


def _job_and_trial(db: Database, job_id: str) -> tuple[Job, int | None]:
    """The model's job, and its trial's number when a study ran it."""
    with db.read() as session:
        job = session.get(Job, job_id)
        if job is None:  # the foreign key keeps a model's job; a database edited by hand might not
            raise JobNotFound(job_id)
        number = session.scalar(select(StudyTrial.number).where(StudyTrial.job_id == job_id)) if job.study_id else None
    return job, number
