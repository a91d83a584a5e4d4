"""The figures (service/plots.py) and their routes (service/api/routes/plots.py)."""

from __future__ import annotations

import io
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.data import CLASS_NAMES, load_fashion_mnist
from models.training import EpochMetrics
from service import plots
from service.api import auth
from service.api.app import create_app
from service.jobs import queue
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.svg import SVG, group, ids, parse, texts

TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 2, "seed": 1}


def history(epochs: int, validation: bool = False) -> list[EpochMetrics]:
    return [
        EpochMetrics(
            epoch=epoch,
            train_loss=1.2 / epoch,
            train_acc=0.6 + 0.03 * epoch,
            test_acc=0.58 + 0.03 * epoch,
            seconds=1.0,
            val_acc=0.59 + 0.03 * epoch if validation else None,
        )
        for epoch in range(1, epochs + 1)
    ]


# -- the figures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("validation", "legend"),
    [(False, ["train loss", "train acc", "test acc"]), (True, ["train loss", "train acc", "test acc", "val acc"])],
)
def test_curves_draw_one_line_per_metric_with_a_legend(validation: bool, legend: list[str]) -> None:
    svg = plots.training_curves(history(5, validation), epochs=10, title="784-16-10 relu")
    root = parse(svg)
    assert ids(root, "curve-") == ["curve-" + label.replace(" ", "-") for label in legend]
    assert texts(group(root, "legend")) == legend
    every_text = texts(root)
    assert "epoch" in every_text and "784-16-10 relu" in every_text and "10" in every_text  # x runs to 10
    # the train loss line has one vertex per epoch
    path = group(root, "curve-train-loss").find(f"{SVG}path")
    assert path is not None and path.get("d", "").count("L") == 4


def test_the_same_data_gives_the_same_bytes() -> None:
    rows = history(3)
    assert plots.training_curves(rows, epochs=3) == plots.training_curves(rows, epochs=3)
    assert plots.training_curves(rows, epochs=3, fmt="png") == plots.training_curves(rows, epochs=3, fmt="png")
    assert plots.training_curves(rows, epochs=3) != plots.training_curves(rows[:2], epochs=3)
    assert b"<dc:date>" not in plots.training_curves(rows, epochs=3)


def test_no_epochs_yet_is_a_valid_figure_saying_so() -> None:
    root = parse(plots.training_curves([], epochs=10))
    assert "no epochs yet" in texts(root)
    assert texts(group(root, "legend")) == ["train loss", "train acc", "test acc"]


def test_png_curves_are_a_png_of_the_documented_size() -> None:
    png = plots.training_curves(history(2), epochs=2, fmt="png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (round(4.5 * plots.PNG_DPI), round(3.2 * plots.PNG_DPI))


def test_figures_rendered_in_threads_at_once_are_the_ones_rendered_alone() -> None:
    """The API renders in its thread pool; pyplot's shared state would mix figures up, Figure objects must not."""
    inputs = [history(n) for n in range(1, 9)]
    alone = [plots.training_curves(rows, epochs=8) for rows in inputs]
    together: list[bytes] = [b""] * len(inputs)
    start = threading.Barrier(len(inputs))

    def render(index: int) -> None:
        start.wait()
        together[index] = plots.training_curves(inputs[index], epochs=8)

    threads = [threading.Thread(target=render, args=(index,)) for index in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_a_comparison_has_a_line_per_run_in_each_panel_and_their_labels() -> None:
    runs = [plots.Run(f"hidden {width}", history(epochs), 4) for width, epochs in ((64, 4), (256, 3), (1024, 0))]
    root = parse(plots.comparison(runs))
    assert ids(root, "loss-") == ["loss-0", "loss-1", "loss-2"]
    assert ids(root, "accuracy-") == ["accuracy-0", "accuracy-1", "accuracy-2"]
    assert texts(group(root, "legend")) == ["hidden 64", "hidden 256", "hidden 1024"]
    assert {"train loss", "test accuracy"} <= set(texts(root))


@pytest.mark.parametrize(
    ("specs", "labels"),
    [
        ([{"hidden_layers": [256], "lr": 0.1}, {"hidden_layers": [1024], "lr": 0.1}], ["hidden 256", "hidden 1024"]),
        ([{"lr": 0.1, "seed": 1}, {"lr": 0.5, "seed": 2}], ["lr 0.1", "lr 0.5"]),  # the seed is noise here
        ([{"lr": 0.1, "seed": 1}, {"lr": 0.1, "seed": 2}], ["seed 1", "seed 2"]),  # unless it is all that differs
        ([{"hidden_layers": [256, 128], "activation": "relu"}, {"hidden_layers": [], "activation": "tanh"}],
         ["hidden 256-128, relu", "hidden none, tanh"]),
        ([{"normalize_inputs": True, "dropout": 0.5}, {"normalize_inputs": False, "dropout": 0.0}],
         ["normalize inputs on, dropout 0.5", "normalize inputs off, dropout 0"]),
        ([{"lr": 0.1}, {"lr": 0.1}], ["aaaaaaaa", "bbbbbbbb"]),  # nothing differs: the job ids
        ([{"lr": 0.1}, {"lr": 0.1}, {"lr": 0.5}], ["lr 0.1 (aaaaaaaa)", "lr 0.1 (bbbbbbbb)", "lr 0.5"]),
    ],
)  # fmt: skip
def test_legend_labels_name_what_differs_between_specs(specs: list[dict[str, Any]], labels: list[str]) -> None:
    names = ["a" * 32, "b" * 32, "c" * 32][: len(specs)]
    assert plots.distinguishing_labels(specs, names) == labels


def test_a_sample_grid_titles_true_over_predicted_and_marks_mistakes() -> None:
    rng = np.random.default_rng(0)
    samples = [
        plots.Sample(rng.integers(0, 256, (28, 28), dtype=np.uint8), CLASS_NAMES[i % 10], CLASS_NAMES[(i * i) % 10])
        for i in range(12)
    ]
    root = parse(plots.sample_grid(samples, title="12 images"))
    wrong = [index for index, sample in enumerate(samples) if not sample.correct]
    assert ids(root, "sample-") == [f"sample-{i}-{'wrong' if i in wrong else 'right'}" for i in range(len(samples))]
    assert len(root.findall(f".//{SVG}image")) == len(samples)
    mistake = group(root, f"sample-{wrong[0]}-wrong")
    titles = texts(mistake)
    assert titles == [samples[wrong[0]].true_label, samples[wrong[0]].predicted_label]
    assert plots.MISTAKE_COLOUR in ET.tostring(mistake).decode()
    assert plots.MISTAKE_COLOUR not in ET.tostring(group(root, "sample-0-right")).decode()


def test_activation_gradients_from_autograd_are_the_textbook_ones() -> None:
    x, curves = plots.activation_gradients()
    assert x[0] == -8.0 and len(x) == 160
    sigmoid, tanh = 1 / (1 + np.exp(-x)), np.tanh(x)
    np.testing.assert_allclose(curves["ReLU"][1], (x > 0).astype(np.float32))
    np.testing.assert_allclose(curves["sigmoid"][1], sigmoid * (1 - sigmoid), atol=1e-6)
    np.testing.assert_allclose(curves["tanh"][1], 1 - tanh**2, atol=1e-6)
    root = parse(plots.activations())
    assert len(ids(root, "value-")) == 3 and len(ids(root, "gradient-")) == 3
    assert {"ReLU(x)", "grad of tanh"} <= set(texts(root))


# -- the routes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    client: TestClient
    trained: list[str]  # two finished jobs: hidden [16] and [32]
    queued: str  # a job no worker has taken
    model_id: str  # the first job's model, aliased `production`
    test_labels: list[int]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Served]:
    """One app with two trained jobs and a queued one; the tests here only read it."""
    settings = Settings(home=tmp_path_factory.mktemp("plots") / "home", data_dir=synthetic_data_dir)
    migrations.upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        trained = []
        for width in (16, 32):
            trained.append(client.post("/v1/jobs", json={**TINY, "hidden_layers": [width]}).json()["id"])
            assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
        queued = client.post("/v1/jobs", json=TINY).json()["id"]
        model_id = client.get(f"/v1/jobs/{trained[0]}").json()["model_id"]
        assert client.put("/v1/aliases/production", json={"model_id": model_id}).status_code == 201
        labels = load_fashion_mnist(synthetic_data_dir, tmp_path_factory.mktemp("labels")).test_labels.tolist()
        yield Served(client, trained, queued, model_id, labels)
    db.dispose()


def test_curves_of_a_finished_job(served: Served) -> None:
    response = served.client.get(f"/v1/jobs/{served.trained[0]}/curves.svg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "no-cache" and response.headers["etag"].startswith('"')
    root = parse(response.content)
    assert texts(group(root, "legend")) == ["train loss", "train acc", "test acc"]
    assert "784-16-10 relu, sgd lr 0.1, 2 epochs" in texts(root)
    path = group(root, "curve-test-acc").find(f"{SVG}path")
    assert path is not None and path.get("d", "").count("L") == 1  # two epochs, one segment
    png = served.client.get(f"/v1/jobs/{served.trained[0]}/curves.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and png.headers["etag"] != response.headers["etag"]


def test_a_figure_the_client_holds_is_a_304_without_a_body(served: Served) -> None:
    url = f"/v1/jobs/{served.trained[0]}/curves.svg"
    etag = served.client.get(url).headers["etag"]
    for header in (etag, f'"other", W/{etag}', "*"):
        again = served.client.get(url, headers={"If-None-Match": header})
        assert again.status_code == 304 and again.content == b"", header
        assert again.headers["etag"] == etag and again.headers["cache-control"] == "no-cache"
    assert served.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_a_job_with_no_epochs_yet_gets_an_empty_figure(served: Served) -> None:
    response = served.client.get(f"/v1/jobs/{served.queued}/curves.svg")
    assert response.status_code == 200 and "no epochs yet" in texts(parse(response.content))


@pytest.mark.parametrize("suffix", ["curves.svg", "curves.png"])
def test_an_unknown_job_is_a_404_json(served: Served, suffix: str) -> None:
    response = served.client.get(f"/v1/jobs/nope/{suffix}")
    assert response.status_code == 404 and response.json() == {
        "detail": "no job with id 'nope'",
        "code": "job_not_found",
    }


def test_compare_labels_jobs_by_what_differs(served: Served) -> None:
    first, second = served.trained
    response = served.client.get("/v1/compare.svg", params={"jobs": f"{first},{second},{first}"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    root = parse(response.content)
    assert texts(group(root, "legend")) == ["hidden 16", "hidden 32"]  # the repeated id is drawn once
    assert ids(root, "loss-") == ["loss-0", "loss-1"]
    etag = response.headers["etag"]
    again = served.client.get("/v1/compare.svg", params={"jobs": f"{first},{second}"}, headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_compare_names_every_unknown_job(served: Served) -> None:
    response = served.client.get("/v1/compare.svg", params={"jobs": f"{served.trained[0]},nope,gone"})
    assert response.status_code == 404 and response.json() == {
        "detail": "no job with id 'nope', 'gone'",
        "code": "job_not_found",
    }


@pytest.mark.parametrize(
    ("jobs", "phrase"),
    [
        (None, "Field required"),
        ("", "1-64 characters"),
        ("a,,b", "1-64 characters"),
        ("x" * 65, "1-64 characters"),
        (",".join(["a"] * 13), "at most 12 jobs can be compared; got 13"),
    ],
)
def test_compare_refuses_bad_job_lists(served: Served, jobs: str | None, phrase: str) -> None:
    response = served.client.get("/v1/compare.svg", params={} if jobs is None else {"jobs": jobs})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "jobs"] and phrase in error["msg"], error


@pytest.mark.parametrize("ref", ["<model>", "production"])
def test_samples_show_test_images_with_true_and_predicted_labels(served: Served, ref: str) -> None:
    model_ref = served.model_id if ref == "<model>" else ref
    response = served.client.get(f"/v1/models/{model_ref}/samples.svg", params={"n": 12})
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    root = parse(response.content)
    cells = ids(root, "sample-")
    assert len(cells) == 12 and len(root.findall(f".//{SVG}image")) == 12
    for index, cell in enumerate(cells):
        true_label, predicted = texts(group(root, cell))
        assert true_label == CLASS_NAMES[served.test_labels[index]]
        assert cell.endswith("right") == (true_label == predicted)
    right = sum(cell.endswith("right") for cell in cells)
    assert f"model {served.model_id[:8]}: {right} of 12 right" in texts(root)


def test_samples_default_to_18_and_revalidate(served: Served) -> None:
    response = served.client.get("/v1/models/production/samples.svg")
    assert len(ids(parse(response.content), "sample-")) == 18
    etag = response.headers["etag"]
    assert (
        served.client.get(f"/v1/models/{served.model_id}/samples.svg", headers={"If-None-Match": etag}).status_code
        == 304
    )
    assert served.client.get("/v1/models/production/samples.svg", params={"n": 5}).headers["etag"] != etag


@pytest.mark.parametrize(("ref", "n", "status"), [("nope", 18, 404), ("production", 0, 422), ("production", 37, 422)])
def test_bad_sample_requests(served: Served, ref: str, n: int, status: int) -> None:
    response = served.client.get(f"/v1/models/{ref}/samples.svg", params={"n": n})
    assert response.status_code == status and "detail" in response.json()


def test_activations_are_cacheable_forever(served: Served) -> None:
    response = served.client.get("/v1/activations.svg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "max-age=31536000, immutable"
    assert len(ids(parse(response.content), "gradient-")) == 3
    again = served.client.get("/v1/activations.svg", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_every_figure_is_in_the_openapi_document_with_its_media_type(served: Served) -> None:
    paths = served.client.get("/openapi.json").json()["paths"]
    expected = {
        "/v1/jobs/{job_id}/curves.svg": "image/svg+xml",
        "/v1/jobs/{job_id}/curves.png": "image/png",
        "/v1/compare.svg": "image/svg+xml",
        "/v1/models/{model_ref}/samples.svg": "image/svg+xml",
        "/v1/activations.svg": "image/svg+xml",
    }
    for path, media_type in expected.items():
        assert list(paths[path]["get"]["responses"]["200"]["content"]) == [media_type], path
    assert paths["/v1/compare.svg"]["get"]["parameters"][0]["schema"]["pattern"]


# -- a fresh app each ------------------------------------------------------------------------------


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_running_jobs_figure_changes_with_each_epoch(client: TestClient, settings: Settings, db: Database) -> None:
    job_id = client.post("/v1/jobs", json={**TINY, "epochs": 3}).json()["id"]
    claim = queue.claim_next_job(db, "test-worker", lease_seconds=30, device="cpu")
    assert claim is not None and claim.job_id == job_id
    url = f"/v1/jobs/{job_id}/curves.svg"
    etags = [client.get(url).headers["etag"]]
    for row in history(2):
        queue.record_epoch(db, claim, row)
        response = client.get(url, headers={"If-None-Match": etags[-1]})
        assert response.status_code == 200, "a new epoch is a new figure"
        etags.append(response.headers["etag"])
    assert len(set(etags)) == 3
    path = group(parse(client.get(url).content), "curve-train-loss").find(f"{SVG}path")
    assert path is not None and path.get("d", "").count("L") == 1


def test_without_the_test_set_samples_are_a_503_saying_what_to_set(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.post("/v1/jobs", json=TINY)
        assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    empty = tmp_path / "empty"
    empty.mkdir()
    elsewhere = Settings(home=settings.home, database_url=settings.database_url, data_dir=empty)
    shutil.rmtree(elsewhere.dataset_cache_dir, ignore_errors=True)  # where the worker unpacked its copy
    with TestClient(create_app(elsewhere), raise_server_exceptions=False) as client:
        model_id = client.get("/v1/models").json()["models"][0]["id"]
        response = client.get(f"/v1/models/{model_id}/samples.svg")
        assert response.status_code == 503 and "FMNIST_DATA_DIR" in response.json()["detail"]


@pytest.mark.parametrize(
    ("scopes", "path", "status"),
    [
        (["train"], "/v1/jobs/nope/curves.svg", 404),  # allowed, then not found
        (["predict"], "/v1/jobs/nope/curves.svg", 403),
        (["predict"], "/v1/compare.svg?jobs=nope", 403),
        (["predict"], "/v1/activations.svg", 200),
        (["train"], "/v1/activations.svg", 403),
        (["train"], "/v1/models/nope/samples.svg", 403),
        (["predict"], "/v1/models/nope/samples.svg", 404),
    ],
)
def test_figures_need_the_scope_of_what_they_show(
    settings: Settings, db: Database, scopes: list[str], path: str, status: int
) -> None:
    _, key = auth.create_key(db, "figures", scopes)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == status
