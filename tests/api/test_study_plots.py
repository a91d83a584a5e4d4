"""A study's figures (service.plots: optimization_history, param_importances, parallel_coordinates) and their
routes (service/api/routes/study_plots.py), on studies whose learning curves are scripted, without training."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from starlette.routing import NoMatchFound

from service import plots
from service.api import auth
from service.api.app import create_app
from service.api.routes import study_plots
from service.jobs import queue, studies
from service.jobs.queue import Claim
from service.jobs.status import JobStatus
from service.plots import TrialResult
from service.settings import Settings
from service.store.db import Database
from tests.support.studies import claim_all, epoch_metrics, run_curve
from tests.support.svg import SVG, group, ids, parse, texts

pytestmark = pytest.mark.db

FIGURES = ("history", "importances", "parallel")
LR_LOW, LR_HIGH = 0.001, 0.5
SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": LR_LOW, "high": LR_HIGH, "log": True},
    "hidden_layers": {"choices": [[64], [256, 256]]},
    "optimizer": {"choices": ["sgd", "adam"]},
    "momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": "sgd"}},
}


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    app = create_app(settings)
    # Until app.py registers the router (then this adds nothing), as it will: behind the `train` scope.
    try:
        app.url_path_for("study_history_svg", study_id="x")
    except NoMatchFound:
        app.include_router(study_plots.router, dependencies=[Depends(auth.TRAIN)])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def submit(client: TestClient, **body: Any) -> str:
    response = client.post("/v1/studies", json={"base": {"epochs": 3, "batch_size": 64}, **body})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def marks(root: ET.Element, gid: str) -> int:
    """How many markers a line of points draws (one <use> each)."""
    return len(list(group(root, gid).iter(f"{SVG}use")))


def markers(root: ET.Element, gid: str) -> list[tuple[float, float]]:
    """Where a line of points draws its markers, in the SVG's coordinates (y down)."""
    return [(float(use.get("x", "nan")), float(use.get("y", "nan"))) for use in group(root, gid).iter(f"{SVG}use")]


def line_points(root: ET.Element, gid: str) -> list[tuple[float, float]]:
    """The vertices of a line, in the SVG's coordinates."""
    path = group(root, gid).find(f"{SVG}path")
    assert path is not None
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", path.get("d", ""))]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def vertices(root: ET.Element, gid: str) -> int:
    """How many points a polyline joins: a gap (NaN) starts a new piece and drops lone points."""
    path = group(root, gid).find(f"{SVG}path")
    assert path is not None
    return sum(1 + piece.count("L") for piece in re.findall(r"M[^M]*L[^M]*", path.get("d", "")))


def figure(client: TestClient, study_id: str, name: str) -> ET.Element:
    response = client.get(f"/v1/studies/{study_id}/{name}.svg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "no-cache" and response.headers["etag"]
    return parse(response.content)


# -- a study with every kind of trial ----------------------------------------------------------------------------

SUCCEEDED = ([0.60, 0.70, 0.80], [0.62, 0.72, 0.84], [0.55, 0.65, 0.75])


@pytest.fixture
def mixed(client: TestClient, db: Database) -> tuple[str, list[Claim]]:
    """Six trials: three succeeded (val acc 0.80, 0.84, 0.75), one pruned at epoch 2, one failed, one running."""
    study_id = submit(
        client,
        space=SPACE,
        trials=6,
        max_concurrent=6,
        seed=4,
        sampler="random",
        pruner={"type": "median", "n_startup_trials": 2},
    )
    claims = claim_all(db)
    assert len(claims) == 6
    for claim, curve in zip(claims, SUCCEEDED, strict=False):
        run_curve(db, claim, curve)
    run_curve(db, claims[3], [0.50, 0.52], finish=False)
    assert queue.prune_claimed_job(db, claims[3], 2) is JobStatus.pruned
    queue.fail_job(db, claims[4], "scripted failure")
    run_curve(db, claims[5], [0.7], finish=False)
    return study_id, claims


def test_the_history_draws_succeeded_and_pruned_trials_and_the_best_so_far(
    client: TestClient, mixed: tuple[str, list[Claim]]
) -> None:
    study_id, _ = mixed
    root = figure(client, study_id, "history")
    shown = texts(root)
    assert f"study {study_id[:8]}, 6 of 6 trials: 3 succeeded, 1 pruned, 1 failed, 1 running" in shown
    assert {"trial number", "validation accuracy", "succeeded", "best so far", "pruned at epoch 2"} <= set(shown)
    # Three points, one cross; the failed trial and the running one are not drawn.
    assert marks(root, "history-succeeded") == 3 and marks(root, "history-pruned") == 1
    assert vertices(root, "history-best") >= 2


def test_the_parallel_coordinates_have_an_axis_per_parameter_and_a_line_per_finished_trial(
    client: TestClient, db: Database, mixed: tuple[str, list[Claim]]
) -> None:
    study_id, _ = mixed
    root = figure(client, study_id, "parallel")
    shown = set(texts(root))
    assert {"lr", "hidden_layers", "optimizer", "momentum", "val_acc"} <= shown
    assert {"64", "256-256", "sgd", "adam"} <= shown  # choices by their labels, layer lists joined by dashes
    assert {"0.01", "0.1"} <= shown  # the log axis, in plain numbers
    assert {"validation accuracy", "pruned (last val acc)"} <= shown
    assert sorted(ids(root, "succeeded-")) == ["succeeded-0", "succeeded-1", "succeeded-2"]
    assert ids(root, "pruned-") == ["pruned-3"]
    view = studies.get_study(db, study_id)
    params = {row.trial.number: row.trial.params for row in view.rows}
    assert {"momentum" in params[number] for number in (0, 1, 2)} == {True, False}, params  # the seed gives both
    for number in (0, 1, 2):
        # Five axes: an adam trial has no momentum, so its line stops at optimizer and val_acc stands alone.
        assert vertices(root, f"succeeded-{number}") == (5 if "momentum" in params[number] else 3), params[number]


def test_importances_with_too_few_succeeded_trials_say_so(
    client: TestClient, db: Database, mixed: tuple[str, list[Claim]]
) -> None:
    study_id, _ = mixed
    shown = texts(figure(client, study_id, "importances"))
    assert "needs at least 8 succeeded trials (3 so far):" in shown
    assert not any(text == "lr" for text in shown)


@pytest.mark.parametrize("finished", [0, 1])
def test_importances_of_a_study_that_has_hardly_begun_are_a_figure_not_an_error(
    client: TestClient, db: Database, finished: int
) -> None:
    study_id = submit(client, space=SPACE, trials=4, max_concurrent=2, seed=0, sampler="random")
    for claim in claim_all(db)[:finished]:
        run_curve(db, claim, [0.7])
    for name in ("history", "parallel"):
        assert ("no finished trials yet" in texts(figure(client, study_id, name))) == (finished == 0)
    shown = texts(figure(client, study_id, "importances"))
    assert f"needs at least {study_plots.MIN_IMPORTANCE_TRIALS} succeeded trials ({finished} so far):" in shown


def lr_driven(lr: float) -> float:
    """A validation accuracy that only the learning rate decides: from 0.5 at the lowest to 0.9 at the highest."""
    return 0.5 + 0.4 * (math.log(lr) - math.log(LR_LOW)) / (math.log(LR_HIGH) - math.log(LR_LOW))


def test_importances_rank_first_the_parameter_that_drove_the_results(client: TestClient, db: Database) -> None:
    space = {
        "lr": SPACE["lr"],
        "momentum": {"low": 0.0, "high": 0.9},
        "hidden_layers": SPACE["hidden_layers"],
    }
    trials = study_plots.MIN_IMPORTANCE_TRIALS
    study_id = submit(
        client, space=space, trials=trials, max_concurrent=trials, seed=1, sampler="random", pruner="none"
    )
    for claim in claim_all(db):
        run_curve(db, claim, [lr_driven(claim.spec.lr)])
    _, rebuilt = studies.rebuilt_study(db, study_id)
    found, unavailable = study_plots.importances(rebuilt)
    assert unavailable is None and next(iter(found)) == "lr" and found["lr"] > 0.5, found
    assert sum(found.values()) == pytest.approx(1.0)
    shown = texts(figure(client, study_id, "importances"))
    # The bars' labels, most important first (the y axis reads top down), then their shares.
    assert [text for text in shown if text in space] == list(found)
    assert f"{found['lr']:.2f}" in shown


def test_an_unknown_study_has_no_figures(client: TestClient) -> None:
    for name in FIGURES:
        for study_id in ("nope", "0" * 32):
            response = client.get(f"/v1/studies/{study_id}/{name}.svg")
            assert response.status_code == 404, response.text
            assert response.headers["content-type"] == "application/json"
            assert response.json()["code"] == "study_not_found"


def test_a_figure_is_revalidated_and_changes_when_a_trial_records_an_epoch(
    client: TestClient, db: Database, mixed: tuple[str, list[Claim]]
) -> None:
    study_id, claims = mixed
    for name in FIGURES:
        url = f"/v1/studies/{study_id}/{name}.svg"
        first = client.get(url)
        again = client.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
        assert client.get(url).content == first.content  # the same data, the same bytes
    before = {name: client.get(f"/v1/studies/{study_id}/{name}.svg").headers["etag"] for name in FIGURES}
    queue.record_epoch(db, claims[5], epoch_metrics(2, 0.71))  # the running trial's second epoch
    for name in FIGURES:
        after = client.get(f"/v1/studies/{study_id}/{name}.svg", headers={"If-None-Match": before[name]})
        assert after.status_code == 200 and after.headers["etag"] != before[name]


def test_the_routes_are_documented_as_svg_with_a_json_404(client: TestClient) -> None:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for name in FIGURES:
        responses = paths[f"/v1/studies/{{study_id}}/{name}.svg"]["get"]["responses"]
        assert "image/svg+xml" in responses["200"]["content"]
        assert responses["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorPublic")


# -- the figures from plain data ---------------------------------------------------------------------------------


def trial(number: int, status: str, params: dict[str, Any], value: float | None = None, **extra: Any) -> TrialResult:
    curve = extra.pop("curve", {1: value} if value is not None else {})
    return TrialResult(number, status, params, value, curve, **extra)


@pytest.mark.parametrize(
    ("epochs", "label"),
    [
        ([2, 2], "pruned at epoch 2"),
        ([3, 1, 2], "pruned at epochs 1, 2 and 3"),
        ([1, 2, 3, 4, 9], "pruned at epochs 1 to 9"),
    ],
)
def test_the_pruned_trials_are_one_legend_entry_naming_their_epochs(epochs: list[int], label: str) -> None:
    trials = [trial(0, "succeeded", {}, 0.8)] + [
        trial(i + 1, "pruned", {}, curve={e: 0.5 for e in range(1, k + 1)}, pruned_at_epoch=k)
        for i, k in enumerate(epochs)
    ]
    root = parse(plots.optimization_history(trials))
    assert texts(group(root, "legend")) == ["succeeded", "best so far", label]
    assert marks(root, "history-pruned") == len(epochs)


def test_the_best_so_far_steps_up_only_at_a_better_trial() -> None:
    trials = [trial(n, "succeeded", {}, v) for n, v in enumerate([0.7, 0.6, 0.8, 0.75])] + [
        trial(4, "failed", {}),
        trial(5, "pruned", {}, curve={1: 0.4}, pruned_at_epoch=1),
    ]
    root = parse(plots.optimization_history(trials))
    succeeded, [cross] = markers(root, "history-succeeded"), markers(root, "history-pruned")
    assert len(succeeded) == 4  # the failed trial has no point
    best = line_points(root, "history-best")
    # Two levels, trial 0's (0.7) then trial 2's (0.8): the step up at trial 2, held to the last trial drawn.
    assert sorted({y for _, y in best}, reverse=True) == [succeeded[0][1], succeeded[2][1]]
    assert best[0] == succeeded[0] and succeeded[2] in best and best[-1][0] == cross[0]


def test_a_figure_without_finished_trials_says_so() -> None:
    waiting = [trial(0, "running", {"lr": 0.1}), trial(1, "failed", {"lr": 0.2})]
    for svg in (plots.optimization_history(waiting), plots.parallel_coordinates(waiting, {"lr": SPACE["lr"]})):
        assert "no finished trials yet" in texts(parse(svg))


def test_importances_are_drawn_most_important_first_whatever_their_order() -> None:
    root = parse(plots.param_importances({"momentum": 0.1, "lr": 0.7, "hidden_layers": 0.2}, title="study x"))
    shown = texts(root)
    assert [text for text in shown if text in ("lr", "hidden_layers", "momentum")] == [
        "lr",
        "hidden_layers",
        "momentum",
    ]
    assert {"0.70", "0.20", "0.10", "study x", "importance (share of the variance, fANOVA)"} <= set(shown)


def test_importances_that_mean_nothing_are_a_sentence_not_bars() -> None:
    root = parse(plots.param_importances({}, unavailable="needs at least 41 succeeded trials (3 so far):\nwhy"))
    assert texts(group(root, "unavailable")) == ["needs at least 41 succeeded trials (3 so far):", "why"]
    assert ids(root, "importances") == []


def test_parallel_coordinates_label_choices_and_leave_out_what_a_trial_lacks() -> None:
    space: dict[str, dict[str, Any]] = {
        "hidden_layers": {"choices": [[256, 256], [], [64]]},
        "optimizer": {"choices": ["sgd", "adam"]},
        "momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": "sgd"}},
        "nesterov": {"choices": [True, False]},
    }
    trials = [
        trial(
            0, "succeeded", {"hidden_layers": [256, 256], "optimizer": "sgd", "momentum": 0.5, "nesterov": True}, 0.8
        ),
        trial(1, "succeeded", {"hidden_layers": [], "optimizer": "adam", "nesterov": False}, 0.7),
        trial(2, "pruned", {"hidden_layers": [64], "optimizer": "adam", "nesterov": True}, curve={1: 0.3, 2: 0.4}),
    ]
    root = parse(plots.parallel_coordinates(trials, space))
    assert {"256-256", "none", "64", "on", "off", "sgd", "adam"} <= set(texts(root))
    assert vertices(root, "succeeded-0") == 5
    # Adam has no momentum: the line stops at optimizer and picks up at nesterov.
    assert vertices(root, "succeeded-1") == 4 and vertices(root, "pruned-2") == 4


@pytest.mark.parametrize(
    ("space", "params", "shown", "not_shown"),
    [
        # Within a decade, the log axis labels its 2, 3... ticks: 0.05 to 0.07 holds no power of ten.
        ({"lr": {"low": 0.05, "high": 0.07, "log": True}}, {"lr": 0.06}, {"0.05", "0.06", "0.07"}, set()),
        # A float field whose bounds read back as whole numbers keeps its fractions; an int field has none.
        ({"momentum": {"low": 0, "high": 1}}, {"momentum": 0.5}, {"0.2", "0.8"}, set()),
        ({"epochs": {"low": 1, "high": 3}}, {"epochs": 2}, {"1", "2", "3"}, {"1.5", "2.5"}),
    ],
)
def test_parallel_coordinates_tick_numeric_axes_as_their_values_need(
    space: dict[str, Any], params: dict[str, Any], shown: set[str], not_shown: set[str]
) -> None:
    labels = set(texts(parse(plots.parallel_coordinates([trial(0, "succeeded", params, 0.8)], space))))
    assert shown <= labels and not (not_shown & labels), labels


def test_the_same_trials_draw_the_same_bytes() -> None:
    trials = [trial(0, "succeeded", {"lr": 0.01}, 0.8), trial(1, "pruned", {"lr": 0.3}, curve={1: 0.5})]
    space = {"lr": SPACE["lr"]}
    assert plots.parallel_coordinates(trials, space) == plots.parallel_coordinates(trials, space)
    assert plots.optimization_history(trials) == plots.optimization_history(trials)


# -- the importances, from Optuna's evaluator --------------------------------------------------------------------


def scripted_study(count: int, score: Any, seed: int = 0) -> optuna.Study:
    """``count`` completed trials sampled at random over lr (log) and momentum, scored by ``score(lr, momentum)``."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(count):
        asked = study.ask()
        lr = asked.suggest_float("lr", LR_LOW, LR_HIGH, log=True)
        momentum = asked.suggest_float("momentum", 0.0, 0.9)
        study.tell(asked, score(lr, momentum))
    return study


@pytest.mark.parametrize(
    ("driver", "score"),
    [("lr", lambda lr, momentum: lr_driven(lr)), ("momentum", lambda lr, momentum: 0.5 + 0.4 * momentum)],
)
def test_the_evaluator_follows_whichever_parameter_drove_the_results(driver: str, score: Any) -> None:
    found, unavailable = study_plots.importances(scripted_study(study_plots.MIN_IMPORTANCE_TRIALS, score))
    assert unavailable is None and next(iter(found)) == driver and found[driver] > 0.5, found


@pytest.mark.parametrize(
    ("count", "score", "says"),
    [
        (study_plots.MIN_IMPORTANCE_TRIALS - 1, lambda lr, m: lr, "needs at least 8 succeeded trials (7 so far)"),
        (study_plots.MIN_IMPORTANCE_TRIALS, lambda lr, m: 0.5, "all 8 succeeded trials scored the same"),
    ],
)
def test_importances_that_would_mean_nothing_are_refused_with_the_reason(count: int, score: Any, says: str) -> None:
    found, unavailable = study_plots.importances(scripted_study(count, score))
    assert found == {} and unavailable is not None and unavailable.startswith(says), unavailable


def test_importances_need_two_parameters_that_varied() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(study_plots.MIN_IMPORTANCE_TRIALS):
        asked = study.ask()
        lr = asked.suggest_float("lr", LR_LOW, LR_HIGH, log=True)
        asked.suggest_categorical("optimizer", ["sgd"])
        study.tell(asked, lr_driven(lr))
    found, unavailable = study_plots.importances(study)
    assert found == {} and unavailable is not None and unavailable.startswith("only lr varied among the 8"), unavailable
