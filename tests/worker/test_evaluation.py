"""The evaluation the trainer process computes as a job succeeds (models/evaluation.py), stored with the model:
for a lone job and for each member of a pack, from its own kept weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.checkpoints import load_checkpoint
from models.data import DeviceDataset, load_fashion_mnist, to_device
from models.evaluation import evaluate_model, evaluation_sets
from models.spec import TrainingSpec
from models.training import train_val_split
from service.jobs import queue
from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.registry import get_model
from service.settings import Settings
from service.store.db import Database
from service.store.tables import Model
from service.worker import trainer
from service.worker.worker import Worker
from tests.support.artifacts import checkpoint_file
from tests.support.specs import spec_of

pytestmark = pytest.mark.db

SHAPE = {"hidden_layers": [16], "batch_size": 64, "epochs": 3}


def run_burst(settings: Settings, db: Database) -> None:
    worker = Worker(settings, db, torch.device("cpu"), burst=True)
    try:
        assert worker.run() == 0
    finally:
        worker.close()


def evaluated_again(settings: Settings, model: Model, spec: TrainingSpec, seed: int) -> dict[str, Any]:
    """The evaluation of the model's checkpoint, computed here from the file, on the run's own split."""
    dataset = to_device(load_fashion_mnist(settings.data_dir, settings.dataset_cache_dir), torch.device("cpu"))
    module, _ = load_checkpoint(checkpoint_file(settings, model.id), expected_sha256=model.sha256)
    _, val_index = train_val_split(len(dataset.train_x), spec.val_fraction, seed, dataset.device)
    return evaluate_model(module, *evaluation_sets(dataset, val_index))


def test_a_succeeded_job_stores_the_kept_epochs_evaluation(settings: Settings, db: Database) -> None:
    spec = spec_of(**SHAPE, val_fraction=0.2, seed=11)
    job = queue.enqueue_job(db, spec, max_attempts=3)
    run_burst(settings, db)
    stored = get_job(db, job.id)
    assert stored.status is JobStatus.succeeded, stored.error
    model = get_model(db, stored.model_id)
    evaluation = model.evaluation
    assert evaluation is not None
    assert evaluation["accuracy"] == model.test_acc, "the kept epoch's test_acc, exactly"
    assert sum(map(sum, evaluation["confusion_matrix"])) == 200 == evaluation["samples"]  # the synthetic test split
    assert evaluation["split"] == "test" and len(evaluation["calibration"]["bins"]) == 15
    validation = evaluation["validation"]
    assert validation is not None and validation["split"] == "validation"
    assert validation["accuracy"] == model.val_acc and validation["samples"] == 120  # 20% of 600
    assert evaluation == evaluated_again(settings, model, spec, 11)


def test_a_job_without_validation_stores_none_for_it(settings: Settings, db: Database) -> None:
    job = queue.enqueue_job(db, spec_of(**SHAPE, seed=4), max_attempts=3)
    run_burst(settings, db)
    model = get_model(db, get_job(db, job.id).model_id)
    assert model.evaluation is not None and model.evaluation["validation"] is None
    assert model.evaluation["accuracy"] == model.test_acc


def test_each_member_of_a_pack_gets_its_own_evaluation(settings: Settings, db: Database) -> None:
    specs = [
        spec_of(**SHAPE, val_fraction=0.1, lr=0.1, seed=1),
        spec_of(**SHAPE, val_fraction=0.1, lr=0.02, momentum=0.9, seed=2),
    ]
    ids = [queue.enqueue_job(db, spec, max_attempts=3).id for spec in specs]
    run_burst(settings.model_copy(update={"pack_max": 4}), db)
    jobs = [get_job(db, job_id) for job_id in ids]
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 2, [job.error for job in jobs]
    assert all(job.provenance is not None and job.provenance["pack_size"] == 2 for job in jobs), "trained as a pack"
    evaluations = []
    for job, spec in zip(jobs, specs, strict=True):
        model = get_model(db, job.model_id)
        evaluation = model.evaluation
        assert evaluation is not None
        assert evaluation["accuracy"] == model.test_acc
        assert evaluation["validation"]["accuracy"] == model.val_acc
        assert sum(map(sum, evaluation["confusion_matrix"])) == 200
        # Its own weights and its own validation rows: what its checkpoint gives on its own split.
        assert evaluation == evaluated_again(settings, model, spec, spec.seed or 0)
        evaluations.append(evaluation)
    assert evaluations[0] != evaluations[1]
    _, first_rows = train_val_split(600, 0.1, 1, torch.device("cpu"))
    _, second_rows = train_val_split(600, 0.1, 2, torch.device("cpu"))
    assert first_rows is not None and second_rows is not None
    for evaluation, rows in zip(evaluations, (first_rows, second_rows), strict=True):
        assert {m["index"] for m in evaluation["validation"]["mistakes"]} <= set(rows.tolist())


def test_an_evaluation_that_fails_is_logged_and_left_to_the_api(
    synthetic_dataset: DeviceDataset, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The model is registered all the same (evaluation None): the API evaluates it on first request."""

    def failing(*_args: object) -> dict[str, Any]:
        raise RuntimeError("no evaluation today")

    monkeypatch.setattr(trainer, "evaluate_model", failing)
    assert trainer._evaluation("job-1", torch.nn.Linear(784, 10), synthetic_dataset, None) is None
    assert "job job-1: the model could not be evaluated" in caplog.text and "no evaluation today" in caplog.text
