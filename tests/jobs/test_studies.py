"""Studies (service/jobs/studies.py, service/api/routes/studies.py): validation, Optuna's suggestions in a
fixed order, pruning on scripted learning curves, refills, cancelling, and whole studies run by a real worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.jobs import queue, studies
from service.jobs.queue import Claim
from service.jobs.status import JobStatus
from service.settings import Settings
from service.store.db import Database
from service.store.tables import Job, Study, StudyTrial
from service.worker.worker import Worker
from tests.support.artifacts import DATABASE_STORE
from tests.support.studies import claim_all, epoch_metrics, run_curve

pytestmark = pytest.mark.db

BASE = {"hidden_layers": [16], "batch_size": 64, "epochs": 3}
SPACE = {
    "lr": {"low": 0.001, "high": 0.5, "log": True},
    "hidden_layers": {"choices": [[8], [16], [32]]},
    "momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": "sgd"}},
}


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def submit(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/studies", json={"base": {"epochs": 3, "batch_size": 64}, **body})
    assert response.status_code == 202, response.text
    return response.json()


# -- submitting ------------------------------------------------------------------------------------------------


def test_a_study_queues_its_first_trials_and_records_their_suggestions(client: TestClient, db: Database) -> None:
    study = submit(client, space=SPACE, trials=6, max_concurrent=2, seed=3, sampler="random")
    assert study["status"] == "running" and study["n_trials"] == 6 and study["counts"] == {"queued": 2}
    assert [trial["number"] for trial in study["trials"]] == [0, 1]
    for trial in study["trials"]:
        params = trial["params"]
        assert 0.001 <= params["lr"] <= 0.5 and params["hidden_layers"] in ([8], [16], [32])
        assert 0.0 <= params["momentum"] <= 0.9  # the base's optimizer is the default, sgd
        job = client.get(f"/v1/jobs/{trial['job_id']}").json()
        assert job["study_id"] == study["id"] and job["spec"]["val_fraction"] == 0.1
        assert job["spec"]["lr"] == params["lr"] and job["spec"]["hidden_layers"] == params["hidden_layers"]
    assert study["sampler"]["type"] == "random" and study["pruner"]["type"] == "median"


def test_conditions_follow_the_parameters_suggested_before_them(client: TestClient) -> None:
    space = {
        "optimizer": {"choices": ["sgd", "adam"]},
        "momentum": {"low": 0.1, "high": 0.9, "when": {"optimizer": "sgd"}},
    }
    study = submit(client, space=space, trials=20, max_concurrent=20, seed=0, sampler="random")
    for trial in study["trials"]:
        assert ("momentum" in trial["params"]) == (trial["params"]["optimizer"] == "sgd")
    assert {trial["params"]["optimizer"] for trial in study["trials"]} == {"sgd", "adam"}


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ({"space": {}}, ["body", "space"], "at least one"),
        ({"space": {"colour": {"choices": [1]}}}, ["body", "space", "colour"], "not a spec field"),
        ({"space": {"lr": {"low": 0.5, "high": 0.1}}}, ["body", "space", "lr"], "low must not exceed high"),
        ({"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, ["body", "space", "lr"], "log scale"),
        ({"space": {"lr": {"low": 0.1, "high": 1000.0}}}, ["body", "space", "lr", "high"], "less than or equal"),
        ({"space": {"hidden_layers": {"low": 1, "high": 3}}}, ["body", "space", "hidden_layers"], "takes choices"),
        ({"space": {"epochs": {"low": 1.5, "high": 3}}}, ["body", "space", "epochs"], "whole number"),
        ({"space": {"activation": {"choices": ["relu", "swish"]}}}, ["body", "space", "activation", "choices", 1], ""),
        ({"space": {"lr": {"choices": [0.1, 0.1]}}}, ["body", "space", "lr"], "distinct"),
        ({"base": {"epochs": 3, "lr": 0.1}, "space": {"lr": {"choices": [0.1]}}}, ["body", "space", "lr"], "fixed"),
        (
            {"space": {"momentum": {"low": 0, "high": 0.9, "when": {"nesterov_x": True}}}},
            ["body", "space", "momentum", "when", "nesterov_x"],
            "base fields or parameters",
        ),
        (
            {
                "base": {"epochs": 3, "optimizer": "adam"},
                "space": {"momentum": {"low": 0, "high": 0.9, "when": {"optimizer": "sgd"}}},
            },
            ["body", "space", "momentum", "when", "optimizer"],
            "never be used",
        ),
        ({"space": {"lr": {"low": 0.1, "high": 0.2}}, "sampler": "grid"}, ["body", "space", "lr"], "choices for every"),
        ({"space": {"lr": {"choices": [0.1, 0.2]}}, "sampler": "grid", "trials": 3}, ["body", "trials"], "2 points"),
        ({"space": {"lr": {"choices": [0.1]}}, "sampler": "bayes"}, ["body", "sampler", "type"], ""),
        ({"space": {"lr": {"choices": [0.1]}}, "pruner": "asha"}, ["body", "pruner"], ""),
        (
            {"base": {"epochs": 3, "val_fraction": 0}, "space": {"lr": {"choices": [0.1]}}},
            ["body", "base", "val_fraction"],
            "val_fraction > 0",
        ),
        ({"space": {"lr": {"choices": [0.1]}}, "trials": 0}, ["body", "trials"], "greater than or equal"),
    ],
)
def test_a_bad_study_is_refused_with_what_to_fix(
    client: TestClient, db: Database, body: dict[str, Any], where: list[Any], says: str
) -> None:
    response = client.post("/v1/studies", json={"base": {"epochs": 3}, **body})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"][: len(where)] == where and says in error["msg"] for error in errors), errors
    with db.read() as session:
        assert session.query(Study).count() == 0 and session.query(Job).count() == 0


def test_an_unknown_study_is_a_404(client: TestClient) -> None:
    for response in (client.get("/v1/studies/nope"), client.post("/v1/studies/nope/cancel")):
        assert response.status_code == 404 and response.json()["code"] == "study_not_found"


def test_the_same_idempotency_key_gets_the_same_study(client: TestClient) -> None:
    body = {"base": {"epochs": 3}, "space": {"lr": {"choices": [0.1, 0.2]}}, "trials": 2}
    first = client.post("/v1/studies", json=body, headers={"Idempotency-Key": "s-1"})
    again = client.post("/v1/studies", json=body, headers={"Idempotency-Key": "s-1"})
    assert first.status_code == 202 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert client.get("/v1/studies").json()["count"] == 1


# -- suggestions in a fixed order --------------------------------------------------------------------------------


def _suggestions(
    db: Database, client: TestClient, sampler: str, seed: int, scripted: dict[int, list[float]]
) -> list[dict[str, Any]]:
    """Runs a study of 12 trials one at a time, each trial's curve scripted by its number; the params in order."""
    study = submit(client, space=SPACE, trials=12, max_concurrent=1, seed=seed, sampler=sampler, pruner="none")
    for number in range(12):
        [claim] = claim_all(db)
        run_curve(db, claim, scripted.get(number, [0.5 + 0.01 * number, 0.6, 0.6 + 0.02 * (number % 5)]))
        queue.advance_study(db, study["id"])
    final = client.get(f"/v1/studies/{study['id']}").json()
    assert final["status"] == "completed" and final["counts"] == {"succeeded": 12}
    return [trial["params"] for trial in final["trials"]]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_the_same_seed_suggests_the_same_parameters_in_the_same_order(
    client: TestClient, db: Database, sampler: str
) -> None:
    first = _suggestions(db, client, sampler, seed=7, scripted={})
    second = _suggestions(db, client, sampler, seed=7, scripted={})
    other = _suggestions(db, client, sampler, seed=8, scripted={})
    assert first == second
    assert first != other
    assert len({str(params) for params in first}) == 12  # no two trials alike


def test_tpe_models_the_results_after_its_startup_trials(client: TestClient, db: Database) -> None:
    # After 10 random trials, TPE's suggestions follow the scripted results: high lr scores, low lr does not.
    study = submit(
        client,
        space={"lr": {"low": 0.001, "high": 1.0, "log": True}},
        trials=20,
        max_concurrent=1,
        seed=1,
        sampler={"type": "tpe", "n_startup_trials": 10},
        pruner="none",
    )
    for _ in range(20):
        [claim] = claim_all(db)
        score = min(0.95, 0.5 + 0.2 * (claim.spec.lr * 10) ** 0.5)
        run_curve(db, claim, [score])
        queue.advance_study(db, study["id"])
    trials = client.get(f"/v1/studies/{study['id']}").json()["trials"]
    startup = sorted(trial["params"]["lr"] for trial in trials[:10])
    modelled = sorted(trial["params"]["lr"] for trial in trials[10:])
    assert modelled[len(modelled) // 2] > startup[len(startup) // 2]


def test_a_grid_study_runs_every_grid_point_once(client: TestClient, db: Database) -> None:
    space = {"lr": {"choices": [0.05, 0.1, 0.2]}, "hidden_layers": {"choices": [[8], [16]]}}
    study = submit(client, space=space, trials=6, max_concurrent=2, seed=0, sampler="grid", pruner="none")
    while claims := claim_all(db):
        for claim in claims:
            run_curve(db, claim, [0.5])
        queue.advance_study(db, study["id"])
    final = client.get(f"/v1/studies/{study['id']}").json()
    points = sorted((trial["params"]["lr"], trial["params"]["hidden_layers"]) for trial in final["trials"])
    assert points == sorted((lr, h) for lr in (0.05, 0.1, 0.2) for h in ([8], [16]))
    assert final["status"] == "completed"


# -- pruning -----------------------------------------------------------------------------------------------------


def _pruning_study(client: TestClient, db: Database, pruner: dict[str, Any]) -> tuple[str, list[Claim]]:
    """Four trials at once; the first two run to the end on scripted curves, the others are left running."""
    study = submit(
        client,
        space={"lr": {"low": 0.01, "high": 0.5}},
        trials=4,
        max_concurrent=4,
        seed=0,
        sampler="random",
        pruner=pruner,
    )
    claims = claim_all(db)
    assert len(claims) == 4
    run_curve(db, claims[0], [0.60, 0.70, 0.80])
    run_curve(db, claims[1], [0.62, 0.72, 0.82])
    return study["id"], claims


def test_the_median_pruner_stops_a_trial_below_the_median_at_its_epoch_and_not_one_above(
    client: TestClient, db: Database
) -> None:
    study_id, claims = _pruning_study(client, db, {"type": "median", "n_startup_trials": 2})
    behind, ahead = claims[2], claims[3]
    run_curve(db, behind, [0.65, 0.66], finish=False)  # epoch 2: 0.66 < the median 0.71
    run_curve(db, ahead, [0.65, 0.75], finish=False)  # epoch 2: 0.75 > 0.71
    assert not studies.should_prune(db, behind.job_id, 1)  # epoch 1: 0.65 is above the median 0.61
    assert studies.should_prune(db, behind.job_id, 2)
    assert not studies.should_prune(db, ahead.job_id, 2)
    assert queue.prune_claimed_job(db, behind, 2) is JobStatus.pruned
    study = client.get(f"/v1/studies/{study_id}").json()
    pruned = study["trials"][2]
    assert pruned["status"] == "pruned" and pruned["pruned_at_epoch"] == 2 and pruned["curve"] == [0.65, 0.66]
    assert study["counts"] == {"succeeded": 2, "pruned": 1, "running": 1}


def test_the_median_pruner_waits_for_its_startup_trials(client: TestClient, db: Database) -> None:
    _study_id, claims = _pruning_study(client, db, {"type": "median", "n_startup_trials": 3})
    run_curve(db, claims[2], [0.1, 0.1], finish=False)  # far behind, but only two trials have finished
    assert not studies.should_prune(db, claims[2].job_id, 2)


def test_successive_halving_prunes_at_its_rungs_and_keeps_its_bookkeeping(client: TestClient, db: Database) -> None:
    pruner = {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2}
    study = submit(client, space={"lr": {"low": 0.01, "high": 0.5}}, trials=4, max_concurrent=4, seed=0, pruner=pruner)
    claims = claim_all(db)
    # The rungs are epochs 1, 2, 4...: at each, a trial goes on only in the top half of those that reached it.
    for claim, curve in zip(claims[:2], ([0.60, 0.70, 0.80], [0.62, 0.72, 0.82]), strict=True):
        for epoch, val_acc in enumerate(curve, start=1):
            queue.record_epoch(db, claim, epoch_metrics(epoch, val_acc))
            if epoch < 3:
                assert not studies.should_prune(db, claim.job_id, epoch)  # as the worker asks: records the rungs
        queue.finish_job(
            db,
            claim,
            model_id=queue.new_id(),
            checkpoint=b"checkpoint",
            artifacts=DATABASE_STORE,
            selected=epoch_metrics(3, curve[-1]),
        )
    run_curve(db, claims[2], [0.3], finish=False)
    assert studies.should_prune(db, claims[2].job_id, 1)
    run_curve(db, claims[3], [0.9], finish=False)
    assert not studies.should_prune(db, claims[3].job_id, 1)
    with db.read() as session:
        attrs = session.query(StudyTrial).filter_by(study_id=study["id"], number=3).one().system_attrs
    assert attrs.get("completed_rung_0") == 0.9


def test_a_trial_past_its_pruning_decision_cannot_end_twice(client: TestClient, db: Database) -> None:
    _study_id, claims = _pruning_study(client, db, {"type": "median", "n_startup_trials": 1})
    client.post(f"/v1/jobs/{claims[2].job_id}/cancel")
    run_curve(db, claims[2], [0.1], finish=False)
    assert queue.prune_claimed_job(db, claims[2], 1) is JobStatus.cancelled  # a cancel answered 200 wins


# -- refills, cancelling -----------------------------------------------------------------------------------------


def test_a_trial_that_ends_makes_room_for_the_next_until_the_budget_is_spent(client: TestClient, db: Database) -> None:
    study = submit(
        client, space={"lr": {"low": 0.01, "high": 0.5}}, trials=3, max_concurrent=2, seed=0, sampler="random"
    )
    first, second = claim_all(db)
    assert queue.advance_study(db, study["id"]) == []  # no room yet
    run_curve(db, first, [0.5])
    [third] = queue.advance_study(db, study["id"])
    assert queue.advance_study(db, study["id"]) == []  # asked once only
    run_curve(db, second, [0.6])
    assert queue.advance_studies(db) == 0  # budget spent: 3 trials asked
    [claim] = claim_all(db)
    assert claim.job_id == third.id
    run_curve(db, claim, [0.7])
    queue.advance_studies(db)
    final = client.get(f"/v1/studies/{study['id']}").json()
    assert final["status"] == "completed" and final["finished_at"] is not None
    assert final["best"]["number"] == 2 and final["best"]["val_acc"] == pytest.approx(0.7)


def test_a_suggestion_the_spec_refuses_is_a_failed_trial_and_the_study_goes_on(
    client: TestClient, db: Database
) -> None:
    # nesterov needs momentum > 0: the choice 0.0 makes an invalid spec.
    study = submit(
        client,
        base={"epochs": 3, "nesterov": True, "momentum": 0.5},
        space={"weight_decay": {"choices": [0.0, 0.001]}},
        trials=2,
        max_concurrent=2,
        seed=0,
        sampler="grid",
    )
    assert study["counts"] == {"queued": 2}
    bad = submit(
        client,
        base={"epochs": 3, "nesterov": True},
        space={"momentum": {"choices": [0.0, 0.5]}},
        trials=2,
        max_concurrent=2,
        seed=0,
        sampler="grid",
    )
    # The invalid suggestion is a failed trial with no job (a job's spec is always valid), and the next trial
    # is asked in its place: the study still has max_concurrent trials queued, as far as the budget allows.
    [failed] = [trial for trial in bad["trials"] if trial["status"] == "failed"]
    assert failed["params"] == {"momentum": 0.0} and failed["job_id"] is None
    assert "nesterov" in failed["error"]
    [queued] = [trial for trial in bad["trials"] if trial["status"] == "queued"]
    assert client.get(f"/v1/jobs/{queued['job_id']}").json()["spec"]["momentum"] == 0.5
    assert client.get("/v1/jobs").status_code == 200
    [claim] = [claim for claim in claim_all(db) if claim.job_id == queued["job_id"]]
    run_curve(db, claim, [0.5, 0.6, 0.7])
    queue.advance_study(db, bad["id"])
    final = client.get(f"/v1/studies/{bad['id']}").json()
    assert final["status"] == "completed" and final["best"]["params"] == {"momentum": 0.5}


def test_cancelling_a_study_cancels_its_trials_and_asks_for_no_more(client: TestClient, db: Database) -> None:
    study = submit(
        client, space={"lr": {"low": 0.01, "high": 0.5}}, trials=5, max_concurrent=2, seed=0, sampler="random"
    )
    other = client.post("/v1/jobs", json=BASE).json()
    [running] = [queue.claim_next_job(db, "w", 60, device="cpu")]
    assert running is not None
    body = client.post(f"/v1/studies/{study['id']}/cancel").json()
    assert body["status"] == "cancelled" and body["counts"] == {"running": 1, "cancelled": 1}
    assert queue.advance_studies(db) == 0
    assert client.get(f"/v1/jobs/{other['id']}").json()["status"] == "queued"
    again = client.post(f"/v1/studies/{study['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


# -- with a real worker ------------------------------------------------------------------------------------------


def test_a_worker_runs_a_study_to_the_end_pruning_the_hopeless_trials(
    client: TestClient, settings: Settings, db: Database
) -> None:
    # lr <= 3e-5 learns nothing in 4 epochs; lr >= 0.2 learns the synthetic classes. One trial at a time, in
    # the grid's (seeded) order: a slow trial that starts once at least two trials have finished, most of
    # them fast, is below the median from its first epoch and is pruned there.
    fast, slow = (0.3, 0.2, 0.25), (1e-5, 3e-5)
    study = submit(
        client,
        base={"hidden_layers": [16], "batch_size": 64, "epochs": 4, "val_fraction": 0.2},
        space={"lr": {"choices": [*fast, *slow]}},
        trials=5,
        max_concurrent=1,
        seed=0,
        sampler="grid",
        pruner={"type": "median", "n_startup_trials": 2},
    )
    assert Worker(settings, db, torch.device("cpu"), burst=True).run() == 0
    final = client.get(f"/v1/studies/{study['id']}").json()
    assert final["status"] == "completed" and [trial["number"] for trial in final["trials"]] == [0, 1, 2, 3, 4]
    lrs = [trial["params"]["lr"] for trial in final["trials"]]
    assert sorted(lrs) == sorted((*fast, *slow))
    judged = [
        trial
        for i, trial in enumerate(final["trials"])
        if trial["params"]["lr"] in slow
        and i >= 2
        and sum(lr in fast for lr in lrs[:i]) >= sum(lr in slow for lr in lrs[:i])
    ]
    assert judged, lrs  # the seed puts at least one slow trial after the fast ones
    for trial in judged:
        assert trial["status"] == "pruned", trial
        assert trial["pruned_at_epoch"] < 4 and len(trial["curve"]) == trial["pruned_at_epoch"]
        metrics = client.get(f"/v1/jobs/{trial['job_id']}/metrics").json()
        assert len(metrics["epochs"]) == trial["pruned_at_epoch"]  # the metrics it had are kept
    for trial in final["trials"]:
        if trial["params"]["lr"] in fast:
            assert trial["status"] == "succeeded" and trial["progress"]["epoch"] == 4
    assert final["best"]["params"]["lr"] in fast and final["best"]["model_id"]


def test_a_study_whose_refill_was_lost_is_topped_up_by_the_next_worker(
    client: TestClient, settings: Settings, db: Database
) -> None:
    # A trial ended, and its process died before asking for the next one: the study has room and nothing queued.
    study = submit(client, base=BASE, space={"lr": {"choices": [0.1, 0.2]}}, trials=2, max_concurrent=1, sampler="grid")
    [claim] = claim_all(db)
    run_curve(db, claim, [0.5, 0.6, 0.7])
    assert client.get(f"/v1/studies/{study['id']}").json()["counts"] == {"succeeded": 1}
    assert Worker(settings, db, torch.device("cpu"), burst=True).run() == 0
    final = client.get(f"/v1/studies/{study['id']}").json()
    assert final["status"] == "completed" and final["counts"] == {"succeeded": 2}


def test_trials_of_one_shape_pack_together_and_a_pruned_member_leaves_its_pack(
    client: TestClient, settings: Settings, db: Database
) -> None:
    slow, fast = (1e-5, 2e-5, 3e-5), 0.3
    study = submit(
        client,
        base={"hidden_layers": [16], "batch_size": 64, "epochs": 4, "val_fraction": 0.2},
        space={"lr": {"choices": [*slow, fast]}},
        trials=4,
        max_concurrent=2,
        seed=0,
        sampler="grid",
        pruner={"type": "median", "n_startup_trials": 2},
    )
    for claim in claim_all(db):  # the first two trials, scripted: 0.4 at every epoch
        run_curve(db, claim, [0.4] * 4)
    assert len(queue.advance_study(db, study["id"])) == 2
    worker = Worker(settings.model_copy(update={"pack_max": 4}), db, torch.device("cpu"), burst=True)
    try:
        assert worker.run_once() is True  # one claim: the two trials together
    finally:
        worker.close()
    final = client.get(f"/v1/studies/{study['id']}").json()
    packed = final["trials"][2:]
    assert all(client.get(f"/v1/jobs/{t['job_id']}").json()["provenance"]["pack_size"] == 2 for t in packed)
    assert any(trial["params"]["lr"] in slow for trial in packed)  # three of the four grid points are slow
    for trial in packed:
        if trial["params"]["lr"] in slow:
            assert trial["status"] == "pruned" and trial["pruned_at_epoch"] == 1, trial
        else:
            assert trial["status"] == "succeeded" and trial["progress"]["epoch"] == 4, trial  # trained on
    assert final["status"] == "completed"


def test_hyperband_prunes_only_trials_behind_in_their_bracket(db: Database) -> None:
    # A fixed study id: Hyperband assigns a trial's bracket from a hash of the study's name and its number.
    study = studies.new_study_row(
        study_id="0" * 31 + "1",
        preset=None,
        base={"hidden_layers": [16], "batch_size": 64, "epochs": 3, "val_fraction": 0.1},
        space={"lr": {"low": 0.01, "high": 0.5}},
        sampler={"type": "random"},
        pruner={"type": "hyperband", "min_resource": 1, "max_resource": 3, "reduction_factor": 3},
        n_trials=20,
        max_concurrent=20,
        seed=0,
        max_attempts=3,
        stamp={},
    )
    queue.enqueue_study(db, study)
    claims = claim_all(db)
    assert len(claims) == 20
    pruned_at: dict[int, int] = {}
    # Ten good trials end first, then ten far behind; each epoch judged as the worker does (not the last one).
    for number, claim in enumerate(claims):
        curve = [0.70, 0.75, 0.80] if number < 10 else [0.10, 0.10, 0.10]
        for epoch, val_acc in enumerate(curve, start=1):
            queue.record_epoch(db, claim, epoch_metrics(epoch, val_acc))
            if epoch < 3 and studies.should_prune(db, claim.job_id, epoch):
                assert queue.prune_claimed_job(db, claim, epoch) is JobStatus.pruned
                pruned_at[number] = epoch
                break
        else:
            selected = epoch_metrics(3, curve[-1])
            queue.finish_job(
                db,
                claim,
                model_id=queue.new_id(),
                checkpoint=b"checkpoint",
                artifacts=DATABASE_STORE,
                selected=selected,
            )
    assert all(number >= 10 for number in pruned_at), pruned_at  # no good trial is pruned
    assert len(pruned_at) >= 3, pruned_at  # the bad ones in a bracket with a rung before the end are
    view = studies.get_study(db, study.id)
    assert {row.trial.number for row in view.rows if row.status is JobStatus.pruned} == set(pruned_at)
    assert all(view.rows[number].trial.pruned_at_epoch == epoch for number, epoch in pruned_at.items())


def test_a_trial_pruned_after_its_trainer_ran_to_the_end_still_ends_pruned(
    client: TestClient, settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pruner decides after each epoch's record while the trainer runs on; here the decision comes only
    # once the trainer has finished every epoch (a slow database): the trial ends where it was pruned.
    study = submit(
        client,
        base={"hidden_layers": [16], "batch_size": 64, "epochs": 3},
        space={"lr": {"choices": [1e-5, 2e-5]}},
        trials=2,
        max_concurrent=1,
        seed=0,
        sampler="grid",
        pruner={"type": "median", "n_startup_trials": 1},
    )
    [first] = claim_all(db)
    run_curve(db, first, [0.9, 0.9, 0.9])  # far ahead of anything lr 1e-5 reaches
    queue.advance_study(db, study["id"])
    real = studies.should_prune

    def after_the_run(db: Database, job_id: str, epoch: int) -> bool:
        # Two seconds: the trainer, a process of its own, runs its two remaining tiny epochs (~50 ms each) and
        # reports its end meanwhile; the old code then registered the model and ended the trial succeeded.
        time.sleep(2.0)
        return real(db, job_id, epoch)

    monkeypatch.setattr(studies, "should_prune", after_the_run)
    worker = Worker(settings, db, torch.device("cpu"), burst=True)
    try:
        assert worker.run_once() is True
    finally:
        worker.close()
    trial = client.get(f"/v1/studies/{study['id']}").json()["trials"][1]
    assert trial["status"] == "pruned" and trial["pruned_at_epoch"] == 1, trial
    assert len(client.get(f"/v1/jobs/{trial['job_id']}/metrics").json()["epochs"]) == 1
    assert client.get(f"/v1/jobs/{trial['job_id']}").json()["model_id"] is None
