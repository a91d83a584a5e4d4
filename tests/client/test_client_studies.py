"""service.client.Client's study methods against a real server process and a real worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.client import Client, Conflict, InvalidRequest, NotFound, WaitTimeout
from service.errors import InvalidSpec, StudyNotFound
from service.jobs.status import JobStatus
from service.schemas import ParamChoices, ParamRange, StudyPublic
from tests.support.live import TINY, Live, live_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# Trials that never end by themselves: cancelled, they stop at their next batch.
LONG = {"hidden_layers": [16], "batch_size": 4, "epochs": 1000}
BASE = {key: value for key, value in TINY.items() if key != "seed"} | {"epochs": 2}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    with live_stack(tmp_path_factory.mktemp("client-studies"), synthetic_data_dir) as stack:
        yield stack


@pytest.fixture
def client(live: Live) -> Iterator[Client]:
    with Client(live.url, api_key=live.admin_key) as fmnist:
        yield fmnist


@pytest.fixture(scope="module")
def finished(live: Live) -> StudyPublic:
    """A grid study of two quick trials, run to the end."""
    with Client(live.url, api_key=live.admin_key) as fmnist:
        study = fmnist.submit_study(
            {"lr": {"choices": [0.05, 0.3]}}, BASE, sampler="grid", pruner="none", trials=2, max_concurrent=2, seed=7
        )
        try:
            return fmnist.wait_study(study.id, poll_interval=0.1, timeout=90)
        except WaitTimeout:
            pytest.fail(f"the study did not end:\n{live.stack.log('worker')}")


def figure_routes(live: Live) -> bool:
    """Whether the server has the study figures (GET /v1/studies/{id}/history.svg...)."""
    paths = httpx.get(f"{live.url}/openapi.json", timeout=30).json()["paths"]
    assert "/v1/studies/{study_id}" in paths, "the probe reads the server's routes"
    return any(path.startswith("/v1/studies/") and path.endswith("/history.svg") for path in paths)


def test_submit_wait_get_and_list_a_study(client: Client, finished: StudyPublic) -> None:
    assert finished.status == "completed" and finished.n_trials == 2 and finished.seed == 7
    assert finished.sampler["type"] == "grid" and finished.pruner == {"type": "none"}
    assert finished.space == {"lr": {"choices": [0.05, 0.3]}}
    assert [trial.number for trial in finished.trials] == [0, 1]
    assert sorted(trial.params["lr"] for trial in finished.trials) == [0.05, 0.3]
    assert all(trial.status is JobStatus.succeeded for trial in finished.trials)
    assert all(len(trial.curve) == 2 and trial.val_acc is not None for trial in finished.trials)
    assert finished.counts == {"succeeded": 2}
    assert finished.best is not None and finished.best.model_id is not None
    assert finished.best.val_acc == max(trial.val_acc or 0.0 for trial in finished.trials)

    again = client.get_study(finished.id)
    assert again.id == finished.id and again.best == finished.best
    page = client.list_studies(limit=100)
    assert finished.id in {study.id for study in page.data} and page.count >= 1
    assert client.list_studies(offset=10_000).data == []
    # A finished study's trials are jobs like any other.
    job_id = finished.trials[0].job_id
    assert job_id is not None and client.get_job(job_id).status is JobStatus.succeeded


def test_wait_reports_each_change_and_takes_schema_models(client: Client) -> None:
    seen: list[tuple[str, dict[str, int]]] = []
    study = client.submit_study(
        {"lr": ParamRange(low=0.05, high=0.3, log=True), "activation": ParamChoices(choices=["relu", "tanh"])},
        {**BASE, "epochs": 1},
        sampler={"type": "random"},
        pruner={"type": "median", "n_startup_trials": 1},
        trials=2,
        max_concurrent=1,
    )
    assert study.status == "running" and study.max_concurrent == 1 and len(study.trials) == 1
    assert study.space["lr"] == {"low": 0.05, "high": 0.3, "log": True}
    assert study.pruner == {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    done = client.wait_study(study.id, on_change=lambda s: seen.append((s.status, s.counts)), poll_interval=0.05)
    assert done.status == "completed" and len(done.trials) == 2
    assert seen and seen[-1] == (done.status, done.counts)
    assert len(seen) == len(set(map(repr, seen))), "only changes are reported"


def test_an_idempotency_key_starts_one_study(client: Client) -> None:
    space = {"lr": {"choices": [0.1, 0.2]}}
    first = client.submit_study(space, LONG, sampler="grid", trials=2, max_concurrent=1, idempotency_key="study-1")
    again = client.submit_study(space, LONG, sampler="grid", trials=2, max_concurrent=1, idempotency_key="study-1")
    assert again.id == first.id
    with pytest.raises(Conflict, match="Idempotency-Key"):
        client.submit_study(space, LONG, sampler="grid", trials=1, idempotency_key="study-1")
    client.cancel_study(first.id)


def test_cancel_stops_the_study_and_its_trials(client: Client) -> None:
    study = client.submit_study({"lr": {"low": 0.01, "high": 0.5}}, LONG, preset="d2l-mlp", trials=6, max_concurrent=2)
    assert study.base["hidden_layers"] == [16] and len(study.trials) == 2
    cancelled = client.cancel_study(study.id)
    assert cancelled.status == "cancelled"
    done = client.wait_study(study.id, timeout=5)  # no longer running: returns at once
    assert done.status == "cancelled" and len(done.trials) == 2
    for trial in done.trials:  # a running trial stops at its next batch
        assert trial.job_id is not None
        job = client.wait(trial.job_id, timeout=60)
        assert job.status is JobStatus.cancelled
    assert client.cancel_study(study.id).status == "cancelled", "cancelling again changes nothing"


def test_an_unknown_study_is_study_not_found(client: Client) -> None:
    calls = (
        lambda: client.get_study("nope"),
        lambda: client.cancel_study("nope"),
        lambda: client.wait_study("nope"),
    )
    for call in calls:
        with pytest.raises(StudyNotFound, match="nope") as caught:
            call()
        assert isinstance(caught.value, NotFound) and caught.value.status == 404
        assert caught.value.code == "study_not_found"
    with pytest.raises(NotFound):  # one path segment: not GET /v1/jobs, which would answer 200
        client.get_study("../jobs")


def test_an_invalid_space_is_invalid_spec_with_the_field_errors(client: Client) -> None:
    with pytest.raises(InvalidSpec) as caught:
        client.submit_study({"colour": {"choices": [1]}, "lr": {"low": 0.1, "high": 1000.0}}, {"epochs": 1})
    error = caught.value
    assert isinstance(error, InvalidRequest) and error.status == 422 and error.code == "invalid_spec"
    where = {tuple(e["loc"][:3]) for e in error.errors}
    assert ("body", "space", "colour") in where and ("body", "space", "lr") in where
    assert "'colour' is not a spec field" in str(error)
    # The schema's own checks come back as a validation error of the same family, with the fields too.
    with pytest.raises(InvalidRequest) as schema:
        client.submit_study({"lr": {"low": 0.5, "high": 0.1}}, sampler="bayes")
    assert schema.value.status == 422
    assert {tuple(e["loc"][:2]) for e in schema.value.errors} >= {("body", "space"), ("body", "sampler")}


def test_figures_are_svg(live: Live, client: Client, finished: StudyPublic) -> None:
    with pytest.raises(ValueError, match="history, importances, parallel"):
        client.get_study_figure(finished.id, "scatter")
    if not figure_routes(live):
        pytest.skip("the server has no study figure routes yet (GET /v1/studies/{id}/history.svg...)")
    for kind in ("history", "importances", "parallel"):
        figure = client.get_study_figure(finished.id, kind)
        assert figure.lstrip().startswith((b"<?xml", b"<svg")) and b"</svg>" in figure, kind
    with pytest.raises(StudyNotFound):
        client.get_study_figure("nope", "history")
