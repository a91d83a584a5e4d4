"""Model evaluations for the API: the one stored with the model, or, for a model trained before evaluations
were stored, one computed from its checkpoint on first request and stored on its row.

The worker's trainer process evaluates every model it trains (models/evaluation.py, on the data set already
on its device); this is the fallback, and the test images the mistakes figure draws. Both need the Fashion-MNIST
files on the API machine: without them, ``ServiceUnavailable`` says what to set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.data import DatasetUnavailable, FashionMNISTArrays, images_to_inputs, load_fashion_mnist, locate_idx_files
from models.devices import resolve_device
from models.evaluation import EvaluationSet, evaluate_model
from models.training import train_val_split
from service import registry
from service.errors import ServiceUnavailable
from service.jobs.queries import get_job
from service.settings import Settings
from service.store.artifacts import ArtifactStore
from service.store.db import Database
from service.store.tables import Model

log = logging.getLogger(__name__)

NO_DATA = "no Fashion-MNIST test set on this server: set FMNIST_DATA_DIR to evaluate models and draw their mistakes"


@dataclass(frozen=True)
class TestSplit:
    """The whole test split: uint8 images (N, 28, 28), int64 labels (N,), and the test files' digest."""

    images: torch.Tensor
    labels: torch.Tensor
    sha256: str


_test_splits: dict[Path, TestSplit] = {}
# One evaluation or data load at a time: each takes a core or more for a second or so, and two requests for
# the same model would do the same work twice.
_lock = threading.Lock()


def data_folder(settings: Settings) -> Path:
    """The data folder, else the cache where a worker with FMNIST_DOWNLOAD=1 put the files it fetched."""
    folder = next(
        (path for path in (settings.data_dir, settings.dataset_cache_dir) if path and locate_idx_files(path)), None
    )
    if folder is None:
        raise ServiceUnavailable(NO_DATA)
    return folder


def _load(settings: Settings) -> tuple[Path, FashionMNISTArrays]:
    folder = data_folder(settings)
    try:
        return folder, load_fashion_mnist(folder, settings.dataset_cache_dir)
    except DatasetUnavailable as exc:
        log.error("evaluation: %s", exc)
        raise ServiceUnavailable("the Fashion-MNIST files on this server could not be read") from exc


def _test_digest(arrays: FashionMNISTArrays) -> str:
    test_files = {name: sha for name, sha in arrays.file_sha256.items() if name.startswith("t10k")}
    return hashlib.sha256(json.dumps(test_files).encode()).hexdigest()


def test_split(settings: Settings) -> TestSplit:
    """The test split, read once per data folder and kept (8 MB of images); ServiceUnavailable without one."""
    folder = data_folder(settings)
    cached = _test_splits.get(folder)
    if cached is not None:
        return cached
    with _lock:
        if folder not in _test_splits:
            _, arrays = _load(settings)
            _test_splits[folder] = TestSplit(arrays.test_images, arrays.test_labels, _test_digest(arrays))
        return _test_splits[folder]


def model_evaluation(db: Database, settings: Settings, model_ref: str) -> tuple[Model, dict[str, Any]]:
    """The model ``model_ref`` names (an id or an alias) and its evaluation (models/evaluation.py): the stored
    one, else computed from the checkpoint now and stored. Raises ModelNotFound, ServiceUnavailable (no data
    set here), CheckpointError."""
    model = registry.get_model(db, model_ref)
    if model.evaluation is not None:
        return model, model.evaluation
    with _lock:
        model = registry.get_model(db, model.id)  # another request may have stored it meanwhile
        if model.evaluation is None:
            evaluation = _evaluate(db, settings, model)
            registry.store_evaluation(db, model.id, evaluation)
            model.evaluation = evaluation
    assert model.evaluation is not None
    return model, model.evaluation


def _evaluate(db: Database, settings: Settings, model: Model) -> dict[str, Any]:
    """Evaluates a stored checkpoint as the trainer process would have: on the test split, and on the rows its
    run held out for validation (the same split, from its job's seed)."""
    started = time.perf_counter()
    folder, arrays = _load(settings)
    _test_splits.setdefault(folder, TestSplit(arrays.test_images, arrays.test_labels, _test_digest(arrays)))
    device = resolve_device(settings.predict_device)
    module, spec = registry.load_model(db, model, ArtifactStore.for_settings(settings), device)
    test = EvaluationSet("test", images_to_inputs(arrays.test_images.to(device)), arrays.test_labels.to(device))
    validation = None
    if spec.val_fraction > 0:
        seed = get_job(db, model.job_id).seed
        _, val_index = train_val_split(len(arrays.train_images), spec.val_fraction, seed, torch.device("cpu"))
        assert val_index is not None
        validation = EvaluationSet(
            "validation",
            images_to_inputs(arrays.train_images[val_index].to(device)),
            arrays.train_labels[val_index].to(device),
            val_index,
        )
    evaluation = evaluate_model(module, test, validation)
    log.info("model %s evaluated on request in %.2fs", model.id, time.perf_counter() - started)
    return evaluation


def evaluation_digest(evaluation: dict[str, Any]) -> str:
    """A digest of an evaluation's content, for the ETags of the figures drawn from it."""
    return hashlib.sha256(json.dumps(evaluation, sort_keys=True).encode()).hexdigest()
