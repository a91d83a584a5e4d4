"""A model's evaluation over HTTP (GET /v1/models/{ref}/evaluation, service/serving/evaluation.py) and the
figures drawn from it (confusion.svg, calibration.svg, mistakes.svg; service/plots.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import update

from models.data import CLASS_NAMES, load_fashion_mnist
from service import plots
from service.api.app import create_app
from service.registry import get_model
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.store.tables import Model
from service.worker.worker import Worker
from tests.support.svg import group, ids, parse, texts

# A weak model (two epochs of a 16-unit layer): mistakes of many kinds on the synthetic test split.
TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 2, "seed": 1, "val_fraction": 0.2}
FIGURES = ("confusion.svg", "calibration.svg", "mistakes.svg")


def evaluation_of(client: TestClient, ref: str) -> dict[str, Any]:
    response = client.get(f"/v1/models/{ref}/evaluation")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- the figures alone ------------------------------------------------------------------------------


def test_a_confusion_matrix_writes_each_count_in_its_cell_with_the_class_names() -> None:
    matrix = np.arange(100).reshape(10, 10)
    matrix[3] = 0  # a class never present: its row stays blank, not NaN
    root = parse(plots.confusion_matrix(matrix.tolist(), CLASS_NAMES, title="model abc"))
    assert len(ids(root, "cell-")) == 100
    assert texts(group(root, "cell-2-7")) == ["27"] and texts(group(root, "cell-3-3")) == ["0"]
    every = texts(root)
    assert all(every.count(name) == 2 for name in CLASS_NAMES), "on both axes"
    assert {"predicted class", "true class", "share of the true class", "model abc"} <= set(every)


def test_a_reliability_diagram_draws_filled_bins_the_diagonal_and_the_ece() -> None:
    bins = [
        {"lower": m / 15, "upper": (m + 1) / 15, "count": 0, "mean_confidence": None, "accuracy": None}
        for m in range(15)
    ]
    bins[14].update(count=90, mean_confidence=0.98, accuracy=0.95)
    bins[8].update(count=10, mean_confidence=0.55, accuracy=0.4)
    root = parse(plots.reliability_diagram(bins, 0.0420, title="model abc"))
    assert ids(root, "accuracy-") == ["accuracy-0", "accuracy-1"] and ids(root, "gap-") == ["gap-0", "gap-1"]
    assert ids(root, "count-") == ["count-0", "count-1"] and ids(root, "diagonal")
    assert "model abc: ECE 0.0420" in texts(root)
    assert {"accuracy", "perfect calibration"} <= set(texts(root))
    empty = parse(plots.reliability_diagram([{**b, "count": 0} for b in bins], 0.0))
    assert "ECE 0.0000" in texts(empty) and not ids(empty, "accuracy-")


def test_a_mistake_grid_titles_true_over_predicted_with_its_probability() -> None:
    image = np.zeros((28, 28), dtype=np.uint8)
    mistakes = [
        plots.Mistake(image, "Sneaker", "Sandal", 0.99971),
        plots.Mistake(image, "Shirt", "T-shirt/top", 0.5),
    ]
    root = parse(plots.mistake_grid(mistakes, title="two"))
    assert ids(root, "sample-") == ["sample-0-wrong", "sample-1-wrong"]
    assert texts(group(root, "sample-0-wrong")) == ["Sneaker", "Sandal 99.9%"]
    assert texts(group(root, "sample-1-wrong")) == ["Shirt", "T-shirt/top 50%"]


def test_a_long_title_over_few_images_is_wrapped_to_their_width_not_cut() -> None:
    image = np.zeros((28, 28), dtype=np.uint8)
    title = "model 0123456789abcdef: the 2 most confident of 2 mistakes on the test split"
    root = parse(plots.mistake_grid([plots.Mistake(image, "Shirt", "Coat", 0.9)] * 2, title=title))
    width_inches = float(root.get("width", "0pt").removesuffix("pt")) / 72
    lines = [text for text in texts(root) if text not in ("Shirt", "Coat 90%")]
    assert len(lines) > 1 and " ".join(lines) == title
    assert all(len(line) <= width_inches * 13 + 1 for line in lines), (lines, width_inches)


# -- the routes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    client: TestClient
    db: Database
    model_id: str  # aliased `production`
    test_labels: list[int]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Served]:
    settings = Settings(home=tmp_path_factory.mktemp("evaluation") / "home", data_dir=synthetic_data_dir)
    migrations.upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json=TINY).json()
        assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
        model_id = client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
        assert client.put("/v1/aliases/production", json={"model_id": model_id}).status_code == 201
        labels = load_fashion_mnist(synthetic_data_dir, tmp_path_factory.mktemp("labels")).test_labels.tolist()
        yield Served(client, db, model_id, labels)
    db.dispose()


@pytest.mark.parametrize("ref", ["<model>", "production"])
def test_the_stored_evaluation_is_served(served: Served, ref: str) -> None:
    evaluation = evaluation_of(served.client, served.model_id if ref == "<model>" else ref)
    model = get_model(served.db, served.model_id)
    assert model.evaluation is not None
    assert evaluation == {**model.evaluation, "model_id": served.model_id}
    assert evaluation["accuracy"] == model.test_acc and evaluation["split"] == "test"
    assert len(evaluation["confusion_matrix"]) == 10 and sum(map(sum, evaluation["confusion_matrix"])) == 200
    assert [row["class_name"] for row in evaluation["per_class"]] == list(CLASS_NAMES)
    assert len(evaluation["calibration"]["bins"]) == 15 and 0 <= evaluation["ece"] <= 1
    assert evaluation["mistakes"] and evaluation["confused_pairs"]
    assert evaluation["validation"]["split"] == "validation" and evaluation["validation"]["accuracy"] == model.val_acc


def test_a_model_without_a_stored_evaluation_is_evaluated_once_and_kept(served: Served) -> None:
    stored = get_model(served.db, served.model_id).evaluation
    assert stored is not None
    with served.db.write() as session:
        session.execute(update(Model).where(Model.id == served.model_id).values(evaluation=None))
    assert get_model(served.db, served.model_id).evaluation is None
    computed = evaluation_of(served.client, "production")
    kept = get_model(served.db, served.model_id).evaluation
    assert kept is not None and computed == {**kept, "model_id": served.model_id}
    # The API's CPU and the trainer's give the same predictions: the same numbers, the floats within rounding.
    for split in ("test", "validation"):
        ours, theirs = (computed, stored) if split == "test" else (computed["validation"], stored["validation"])
        assert ours["confusion_matrix"] == theirs["confusion_matrix"] and ours["accuracy"] == theirs["accuracy"]
        assert ours["ece"] == pytest.approx(theirs["ece"], abs=1e-6)
        assert [m["index"] for m in ours["mistakes"]] == [m["index"] for m in theirs["mistakes"]]


def test_an_unknown_model_is_a_404(served: Served) -> None:
    for path in ["evaluation", *FIGURES]:
        response = served.client.get(f"/v1/models/nope/{path}")
        assert response.status_code == 404 and response.json()["code"] == "model_not_found", path


def test_the_confusion_matrix_figure(served: Served) -> None:
    evaluation = evaluation_of(served.client, served.model_id)
    response = served.client.get("/v1/models/production/confusion.svg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "no-cache"
    root = parse(response.content)
    every = texts(root)
    assert all(every.count(name) == 2 for name in CLASS_NAMES)
    matrix = evaluation["confusion_matrix"]
    assert [texts(group(root, f"cell-{i}-{j}")) for i in range(10) for j in range(10)] == [
        [str(matrix[i][j])] for i in range(10) for j in range(10)
    ]
    assert f"model {served.model_id[:8]}: test accuracy {evaluation['accuracy']:.2%}" in every


def test_the_calibration_figure_names_the_ece(served: Served) -> None:
    evaluation = evaluation_of(served.client, served.model_id)
    response = served.client.get(f"/v1/models/{served.model_id}/calibration.svg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    root = parse(response.content)
    assert f"model {served.model_id[:8]}: ECE {evaluation['ece']:.4f}" in texts(root)
    filled = [b for b in evaluation["calibration"]["bins"] if b["count"]]
    assert len(ids(root, "accuracy-")) == len(filled) == len(ids(root, "count-"))


def test_the_mistakes_figure_shows_the_most_confident_first(served: Served) -> None:
    evaluation = evaluation_of(served.client, served.model_id)
    response = served.client.get("/v1/models/production/mistakes.svg", params={"n": 9})
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    root = parse(response.content)
    cells = ids(root, "sample-")
    shown = evaluation["mistakes"][:9]
    assert len(cells) == len(shown) == 9 and all(cell.endswith("wrong") for cell in cells)
    for cell, mistake in zip(cells, shown, strict=True):
        true_label, predicted = texts(group(root, cell))
        assert true_label == CLASS_NAMES[served.test_labels[mistake["index"]]] == mistake["true_class_name"]
        assert predicted.startswith(mistake["predicted_class_name"] + " ") and predicted.endswith("%")
    probabilities = [m["probability"] for m in shown]
    assert probabilities == sorted(probabilities, reverse=True)
    wrong = 200 - round(evaluation["accuracy"] * 200)
    assert f"model {served.model_id[:8]}: the 9 most confident of {wrong} mistakes" in texts(root)
    assert len(ids(parse(served.client.get("/v1/models/production/mistakes.svg").content), "sample-")) == min(
        18, len(evaluation["mistakes"])
    )


@pytest.mark.parametrize("figure", FIGURES)
def test_a_figure_the_client_holds_is_a_304(served: Served, figure: str) -> None:
    url = f"/v1/models/{served.model_id}/{figure}"
    etag = served.client.get(url).headers["etag"]
    again = served.client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag


@pytest.mark.parametrize(("n", "status"), [(0, 422), (37, 422), (36, 200)])
def test_mistake_counts_are_bounded(served: Served, n: int, status: int) -> None:
    assert served.client.get("/v1/models/production/mistakes.svg", params={"n": n}).status_code == status


def test_the_new_routes_are_documented(served: Served) -> None:
    paths = served.client.get("/openapi.json").json()["paths"]
    for figure in FIGURES:
        responses = paths[f"/v1/models/{{model_ref}}/{figure}"]["get"]["responses"]
        assert list(responses["200"]["content"]) == ["image/svg+xml"] and {"304", "404", "503"} <= set(responses)
    responses = paths["/v1/models/{model_ref}/evaluation"]["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelEvaluationPublic")
    assert {"404", "503"} <= set(responses)


# -- a server without the data set --------------------------------------------------------------------


def test_without_the_data_set_only_what_needs_it_is_a_503(settings: Settings, db: Database, tmp_path: Path) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for _ in range(2):
            client.post("/v1/jobs", json=TINY)
            assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
        evaluated, unevaluated = (model["id"] for model in client.get("/v1/models").json()["models"])
    with db.write() as session:
        session.execute(update(Model).where(Model.id == unevaluated).values(evaluation=None))
    empty = tmp_path / "empty"
    empty.mkdir()
    elsewhere = Settings(home=settings.home, database_url=settings.database_url, data_dir=empty)
    shutil.rmtree(elsewhere.dataset_cache_dir, ignore_errors=True)  # where the worker unpacked its copy
    with TestClient(create_app(elsewhere), raise_server_exceptions=False) as client:
        # A stored evaluation needs no data, but the mistakes' images do.
        assert client.get(f"/v1/models/{evaluated}/evaluation").status_code == 200
        assert client.get(f"/v1/models/{evaluated}/confusion.svg").status_code == 200
        assert client.get(f"/v1/models/{evaluated}/calibration.svg").status_code == 200
        paths = [f"{evaluated}/mistakes.svg", *(f"{unevaluated}/{path}" for path in ["evaluation", *FIGURES])]
        for path in paths:
            response = client.get(f"/v1/models/{path}")
            assert response.status_code == 503, path
            assert response.json()["code"] == "unavailable" and "FMNIST_DATA_DIR" in response.json()["detail"]
    assert get_model(db, unevaluated).evaluation is None
