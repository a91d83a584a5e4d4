"""A model's card over HTTP (GET /v1/models/{ref}/card, service/serving/card.py): real jobs trained by a real
worker on the synthetic data, the card checked against the rows, the metrics and the files they come from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import update

from models.data import locate_idx_files
from models.files import file_sha256
from models.preprocessing import SIZE
from models.spec import SpecFields, TrainingSpec
from service.api import auth
from service.api.app import create_app
from service.registry import get_model
from service.schemas import ModelCardPublic
from service.serving.card import UPLOAD_ACCURACY
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.store.tables import Job, Model
from service.worker.provenance import code_version
from service.worker.worker import Worker

# Tiny runs on the synthetic data: one holds a validation split out, the other does not. This one reaches its best
# validation accuracy (1.0) at epoch 3 and holds it at epoch 4: the earliest of equals is kept, not the last.
WITH_VALIDATION = {"hidden_layers": [16], "batch_size": 64, "epochs": 4, "seed": 1, "val_fraction": 0.2, "lr": 0.5}
WITHOUT_VALIDATION = {"hidden_layers": [8], "batch_size": 64, "epochs": 2, "seed": 2}


@dataclass(frozen=True)
class Served:
    client: TestClient
    db: Database
    settings: Settings
    validated: dict[str, Any]  # the job with a validation split; its model aliased `production`
    swept: dict[str, Any]  # the one job of a sweep, without one
    trial: dict[str, Any]  # the one trial of a study


def run_all(settings: Settings, db: Database) -> None:
    worker = Worker(settings, db, torch.device("cpu"), burst=True)
    while worker.run_once():
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Served]:
    settings = Settings(home=tmp_path_factory.mktemp("card") / "home", data_dir=synthetic_data_dir)
    migrations.upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        validated = client.post("/v1/jobs", json=WITH_VALIDATION).json()
        sweep = client.post("/v1/sweeps", json={"base": WITHOUT_VALIDATION, "grid": {"lr": [0.2]}}).json()
        study = client.post(
            "/v1/studies",
            json={"base": WITHOUT_VALIDATION, "space": {"lr": {"choices": [0.3]}}, "sampler": "grid", "trials": 1},
        ).json()
        run_all(settings, db)
        jobs = [validated["id"], sweep["jobs"][0]["id"], client.get(f"/v1/studies/{study['id']}").json()["trials"][0]]
        validated, swept = (client.get(f"/v1/jobs/{job_id}").json() for job_id in jobs[:2])
        trial = client.get(f"/v1/jobs/{jobs[2]['job_id']}").json()
        for job in (validated, swept, trial):
            assert job["status"] == "succeeded", job
        assert client.put("/v1/aliases/production", json={"model_id": validated["model_id"]}).status_code == 201
        yield Served(client, db, settings, validated, swept, trial)
    db.dispose()


def card_of(client: TestClient, ref: str) -> dict[str, Any]:
    response = client.get(f"/v1/models/{ref}/card")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def metrics_of(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]  # type: ignore[no-any-return]


def test_an_alias_and_the_id_give_the_same_card(served: Served) -> None:
    model_id = served.validated["model_id"]
    by_alias, by_id = card_of(served.client, "production"), card_of(served.client, model_id)
    assert by_alias == by_id and by_id["model_id"] == model_id
    assert by_id["aliases"] == ["production"]
    ModelCardPublic.model_validate(by_id)


def test_the_card_describes_the_model_as_its_row_and_the_registry_do(served: Served) -> None:
    model_id = served.validated["model_id"]
    card = card_of(served.client, model_id)
    listed = served.client.get(f"/v1/models/{model_id}").json()
    for field in ("summary", "spec", "parameters", "sha256", "size_bytes", "created_at", "aliases"):
        assert card[field] == listed[field], field
    # Every spec field, whatever fields the spec has now: the card carries the spec as a whole.
    assert set(card["spec"]) == set(SpecFields.model_fields)
    spec = TrainingSpec.model_validate(WITH_VALIDATION)
    assert card["parameters"] == spec.parameter_count == 784 * 16 + 16 + 16 * 10 + 10
    assert card["summary"] == "784-16-10 relu, sgd lr 0.5, 4 epochs"


@pytest.mark.parametrize("which", ["validated", "trial"])  # a study's trials always hold validation out
def test_with_a_validation_split_the_kept_epoch_is_the_best_on_validation(served: Served, which: str) -> None:
    job = getattr(served, which)
    card = card_of(served.client, job["model_id"])
    epochs = metrics_of(served.client, job["id"])
    assert job["spec"]["val_fraction"] > 0 and len(epochs) == job["spec"]["epochs"]
    best = max(epochs, key=lambda row: (row["val_acc"], -row["epoch"]))  # the earliest of equals
    kept = card["kept_epoch"]
    assert kept == {
        "epoch": best["epoch"],
        "reason": "validation",
        "epochs_trained": len(epochs),
        "epochs_planned": len(epochs),
        "test_acc": best["test_acc"],
        "val_acc": best["val_acc"],
    }
    assert card["evaluation"]["validation"]["accuracy"] == best["val_acc"]
    if which == "validated":
        assert best["epoch"] < len(epochs), f"the recipe was chosen to keep an epoch before the last: {epochs}"


def test_without_a_validation_split_the_kept_epoch_is_the_last(served: Served) -> None:
    job = served.swept
    card = card_of(served.client, job["model_id"])
    last = metrics_of(served.client, job["id"])[-1]
    assert card["kept_epoch"] == {
        "epoch": 2,
        "reason": "last",
        "epochs_trained": 2,
        "epochs_planned": 2,
        "test_acc": last["test_acc"],
        "val_acc": None,
    }
    assert last["epoch"] == 2 and card["evaluation"]["validation"] is None


def test_the_evaluation_is_the_one_the_evaluation_route_serves(served: Served) -> None:
    model_id = served.validated["model_id"]
    card = card_of(served.client, model_id)
    assert card["evaluation"] == served.client.get(f"/v1/models/{model_id}/evaluation").json()
    assert card["evaluation"]["accuracy"] == card["kept_epoch"]["test_acc"]


def test_provenance_is_what_the_worker_ran_with(served: Served, synthetic_data_dir: Path) -> None:
    job = served.validated
    provenance = card_of(served.client, job["model_id"])["provenance"]
    files = locate_idx_files(synthetic_data_dir)
    assert files is not None
    assert provenance["data_sha256"] == {name: file_sha256(path) for name, path in files.items()}
    epochs = metrics_of(served.client, job["id"])
    assert provenance == {
        "seed": 1,
        "data_sha256": provenance["data_sha256"],
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "device": "cpu",
        "cuda_graphs": False,
        "pack_size": 1,
        "train_seconds": pytest.approx(sum(row["seconds"] for row in epochs)),
        "train_samples": job["provenance"]["train_samples"],
    }
    assert provenance["train_samples"] > 0


def test_lineage_names_the_job_its_sweep_or_its_study_trial(served: Served) -> None:
    alone = card_of(served.client, served.validated["model_id"])["lineage"]
    assert alone["job_id"] == served.validated["id"]
    assert (alone["sweep_id"], alone["study_id"], alone["trial_number"], alone["preset"]) == (None, None, None, None)
    assert (alone["attempts"], alone["max_attempts"], alone["resumed_from_epoch"]) == (1, 3, 0)
    assert alone["submitted_at"] == served.validated["created_at"]
    assert alone["finished_at"] == served.validated["finished_at"]

    swept = card_of(served.client, served.swept["model_id"])["lineage"]
    assert swept["sweep_id"] == served.swept["sweep_id"] is not None and swept["study_id"] is None

    trial = card_of(served.client, served.trial["model_id"])["lineage"]
    assert trial["study_id"] == served.trial["study_id"] is not None
    assert trial["trial_number"] == 0 and trial["sweep_id"] is None


def test_labels_and_a_resumed_attempt_show_in_the_lineage(served: Served) -> None:
    job = served.swept
    patched = served.client.patch(f"/v1/jobs/{job['id']}", json={"tags": {"team": "vision"}, "note": "baseline"})
    assert patched.status_code == 200
    with served.db.write() as session:  # as a second attempt that resumed after epoch 1 would have left it
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(attempt=2, provenance={**job["provenance"], "resumed_from_epoch": 1})
        )
    lineage = card_of(served.client, job["model_id"])["lineage"]
    assert (lineage["tags"], lineage["note"]) == ({"team": "vision"}, "baseline")
    assert (lineage["attempts"], lineage["resumed_from_epoch"]) == (2, 1)


def test_the_input_contract_and_the_measured_limits(served: Served) -> None:
    card = card_of(served.client, "production")
    contract = card["input_contract"]
    assert (contract["height"], contract["width"], contract["colour"]) == (SIZE, SIZE, "grey")
    assert "light garment on a dark background" in contract["polarity"]
    assert {"PNG", "JPEG"} <= set(contract["formats"])
    assert contract["max_upload_bytes"] == served.settings.max_upload_bytes
    assert contract["max_image_pixels"] == served.settings.max_image_pixels
    assert any("negated" in step for step in contract["upload_steps"])
    limits = card["known_limits"]
    assert "bench.upload_accuracy" in limits["source"] and "Uploads as people make them" in limits["source"]
    assert [row["upload"] for row in limits["uploads"]] == [row.upload for row in UPLOAD_ACCURACY]
    assert limits["uploads"][0] == {
        "upload": "the test tensors themselves",
        "accuracy": 0.857,
        "change": None,
        "agreement": 1.0,
    }
    assert limits["notes"] and all(note.strip() for note in limits["notes"])


def test_the_measured_limits_are_the_readme_s(served: Served) -> None:
    """The constant and the README's table of bench.upload_accuracy say the same."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Uploads as people make them (CPU)", 1)[1].split("\n### ", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| ")][2:]
    assert [
        (name, float(accuracy), None if change == "-" else float(change), float(agreement))
        for name, accuracy, change, agreement in rows
    ] == [(row.upload, row.accuracy, row.change, row.agreement) for row in UPLOAD_ACCURACY]


def test_a_model_without_a_stored_evaluation_is_evaluated_for_its_card(served: Served) -> None:
    model_id = served.trial["model_id"]
    stored = get_model(served.db, model_id).evaluation
    assert stored is not None
    with served.db.write() as session:
        session.execute(update(Model).where(Model.id == model_id).values(evaluation=None))
    card = card_of(served.client, model_id)
    kept = get_model(served.db, model_id).evaluation
    assert kept is not None and card["evaluation"] == {**kept, "model_id": model_id}
    assert card["evaluation"]["confusion_matrix"] == stored["confusion_matrix"]
    assert card["evaluation"]["accuracy"] == stored["accuracy"] == card["kept_epoch"]["test_acc"]


def test_a_job_recorded_before_provenance_existed_gives_nulls_not_errors(served: Served) -> None:
    job = served.trial
    with served.db.write() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(provenance=None))
    card = card_of(served.client, job["model_id"])
    provenance = card["provenance"]
    assert provenance["data_sha256"] == {} and provenance["seed"] == job["seed"]
    assert [provenance[key] for key in ("code_version", "torch_version", "cuda_graphs", "pack_size")] == [None] * 4
    assert provenance["device"] == job["device"] and card["lineage"]["resumed_from_epoch"] is None


def test_an_unknown_model_is_a_404(served: Served) -> None:
    response = served.client.get("/v1/models/no-such-model/card")
    assert response.status_code == 404 and response.json()["code"] == "model_not_found"
    assert "no-such-model" in response.json()["detail"]


def test_the_card_is_documented(served: Served) -> None:
    responses = served.client.get("/openapi.json").json()["paths"]["/v1/models/{model_ref}/card"]["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelCardPublic")
    assert {"404", "503"} <= set(responses)


def test_the_card_needs_the_predict_scope_like_the_evaluation(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    _, predict_only = auth.create_key(db, "dashboard", ["predict"])
    _, train_only = auth.create_key(db, "notebook", ["train"])
    keyed = settings.model_copy(update={"api_keys": SecretStr("admin-key")})
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        for path in ("/v1/models/nope/card", "/v1/models/nope/evaluation"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": f"Bearer {train_only}"}).status_code == 403, path
            assert client.get(path, headers={"Authorization": f"Bearer {predict_only}"}).status_code == 404, path


def test_tags_and_note_are_shown_only_to_a_key_that_may_read_jobs(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tags and notes are run tracking, read with `train`: a key that may only predict sees the card without them."""
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    job = served.validated
    assert served.client.patch(f"/v1/jobs/{job['id']}", json={"tags": {"owner": "ana"}, "note": "x"}).status_code == 200
    _, predict_only = auth.create_key(served.db, "kiosk", ["predict"])
    _, both = auth.create_key(served.db, "notebook", ["train", "predict"])
    keyed = served.settings.model_copy(update={"api_keys": SecretStr("admin-key")})
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        path = f"/v1/models/{job['model_id']}/card"
        hidden = client.get(path, headers={"Authorization": f"Bearer {predict_only}"}).json()["lineage"]
        shown = client.get(path, headers={"Authorization": f"Bearer {both}"}).json()["lineage"]
    assert (hidden["tags"], hidden["note"]) == (None, None)
    assert shown["tags"]["owner"] == "ana" and shown["note"] == "x"
    assert {k: v for k, v in hidden.items() if k not in ("tags", "note")} == {
        k: v for k, v in shown.items() if k not in ("tags", "note")
    }
