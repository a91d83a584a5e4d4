"""`fmnist study ...` against a real server process and a real worker process.

Most run in-process (typer's CliRunner, real HTTP); `--wait` on a study cancelled meanwhile runs the installed
`fmnist` script, as a shell would.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import Client
from tests.support.live import Live, live_stack
from tests.test_e2e import FMNIST

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

QUICK = ["--hidden-layers", "16", "--batch-size", "64", "--epochs", "2"]
# Trials that never end by themselves.
LONG = ["--hidden-layers", "16", "--batch-size", "4", "--epochs", "1000"]
GRID = '{"lr": {"choices": [0.05, 0.3]}}'


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    with live_stack(tmp_path_factory.mktemp("cli-studies"), synthetic_data_dir) as stack:
        yield stack


@pytest.fixture(scope="module")
def finished(live: Live, fmnist: Any) -> dict[str, Any]:
    """A grid study of two quick trials, submitted with --wait."""
    result = fmnist(
        "study", "submit", GRID, *QUICK, "--sampler", "grid", "--pruner", "none", "--trials", "2",
        "--max-concurrent", "2", "--seed", "3", "--wait", "--timeout", "90", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, f"{result.output}\n{live.stack.log('worker')}"
    study: dict[str, Any] = json.loads(result.stdout)
    return study


def figure_routes(live: Live) -> bool:
    """Whether the server has the study figures (GET /v1/studies/{id}/history.svg...)."""
    paths = httpx.get(f"{live.url}/openapi.json", timeout=30).json()["paths"]
    assert "/v1/studies/{study_id}" in paths, "the probe reads the server's routes"
    return any(path.startswith("/v1/studies/") and path.endswith("/history.svg") for path in paths)


def test_submit_inline_wait_then_show_and_list(fmnist: Any, finished: dict[str, Any]) -> None:
    study_id = finished["id"]
    assert finished["status"] == "completed" and finished["seed"] == 3 and finished["space"] == json.loads(GRID)
    assert finished["base"]["hidden_layers"] == [16] and finished["base"]["epochs"] == 2
    assert sorted(trial["params"]["lr"] for trial in finished["trials"]) == [0.05, 0.3]
    assert finished["counts"] == {"succeeded": 2} and finished["best"]["model_id"]

    show = fmnist("study", "show", study_id)
    assert show.exit_code == 0, show.output
    assert f"study {study_id}: completed, 2 of 2 trials (2 succeeded)" in show.stdout
    assert "lr=0.05" in show.stdout and "lr=0.3" in show.stdout and "pruned at" in show.stdout
    rows = [line for line in show.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and all("succeeded" in row and "2/2" in row for row in rows), show.stdout
    best = finished["best"]
    assert show.stdout.splitlines()[-1].startswith(f"best: trial {best['number']} (job {best['job_id']}): val acc ")
    assert json.loads(fmnist("study", "show", study_id, "--json").stdout) == finished
    assert fmnist("study", "status", study_id).stdout == show.stdout, "named like `sweep status` too"

    listed = fmnist("study", "list")
    assert listed.exit_code == 0 and study_id in listed.stdout and "completed" in listed.stdout
    assert f"{best['val_acc']:.4f}" in listed.stdout
    page = json.loads(fmnist("study", "list", "--limit", "100", "--json").stdout)
    assert study_id in {study["id"] for study in page["data"]}


def test_submit_a_space_file_with_sampler_and_pruner_objects_then_cancel(fmnist: Any, tmp_path: Path) -> None:
    space = {"lr": {"low": 0.01, "high": 0.5, "log": True}, "activation": {"choices": ["relu", "tanh"]}}
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(space))
    result = fmnist(
        "study", "submit", f"@{space_file}", *LONG, "--sampler", '{"type": "random"}',
        "--pruner", '{"type": "median", "n_warmup_steps": 1}', "--trials", "3", "--max-concurrent", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    started = re.fullmatch(
        r"started study (\S+): 3 trials, random sampler, median pruner, 1 at once, seed \d+\n", result.stdout
    )
    assert started, result.stdout
    study_id = started.group(1)

    body = json.loads(fmnist("study", "show", study_id, "--json").stdout)
    assert body["space"] == space and body["sampler"]["type"] == "random"
    assert body["pruner"] == {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 1}
    show = fmnist("study", "show", study_id)
    assert "lr=" in show.stdout and "activation=" in show.stdout
    assert "queued" in show.stdout or "running" in show.stdout
    assert show.stdout.splitlines()[-1] == "best: none yet (no trial has succeeded)"

    cancel = fmnist("study", "cancel", study_id)
    assert cancel.exit_code == 0 and cancel.stdout.startswith(f"study {study_id}: cancelled, 1 of 3 trials")
    again = fmnist("study", "cancel", study_id, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "cancelled"


def test_wait_exits_1_when_no_trial_succeeds(fmnist: Any) -> None:
    result = fmnist(
        "study", "submit", GRID, *LONG, "--max-seconds", "0.2", "--sampler", "grid", "--trials", "1", "--wait",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout and "best: none yet" in result.stdout


def test_wait_exits_1_when_the_study_is_cancelled_and_6_when_the_timeout_passes(live: Live, fmnist: Any) -> None:
    timed_out = fmnist(
        "study", "submit", GRID, *LONG, "--sampler", "grid", "--trials", "2", "--wait", "--timeout", "0.5"
    )
    assert timed_out.exit_code == 6 and "timeout" in timed_out.stderr, timed_out.output
    first = re.match(r"study (\S+): running", timed_out.stderr)
    assert first, timed_out.stderr
    with Client(live.url, api_key=live.admin_key) as client:
        client.cancel_study(first.group(1))

    env = {"PATH": "/usr/bin:/bin", "FMNIST_URL": live.url, "FMNIST_API_KEY": live.admin_key}
    command = [*FMNIST, "study", "submit", GRID, *LONG, "--sampler", "grid", "--trials", "2", "--wait", "--json"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as waiting:
        try:
            assert waiting.stderr is not None
            line = waiting.stderr.readline()  # the first change it reports: the study, running
            started = re.match(r"study (\S+): running", line)
            assert started, line
            with Client(live.url, api_key=live.admin_key) as client:
                client.cancel_study(started.group(1))
            stdout, stderr = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
    assert waiting.returncode == 1, stderr
    assert json.loads(stdout)["status"] == "cancelled"
    assert f"study {started.group(1)}: cancelled" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{bad"], "SPACE '{bad': not valid JSON"),
        (['{"lr": 0.1'], "not valid JSON"),
        (["[1, 2]"], "expected a JSON object"),
        (["@missing.json"], "cannot read 'missing.json'"),
        (['{"lr": {"choices": [0.1]}}', "--pruner", "{bad"], "--pruner '{bad': not valid JSON"),
        (['{"lr": {"choices": [0.1]}}', "--pruner", "asha"], "pruner"),  # the server's 422
        (['{"lr": {"choices": [0.1]}}', "--sampler", "bayes"], "sampler"),
        (['{"colour": {"choices": [1]}}'], "'colour' is not a spec field"),
        (['{"lr": {"low": 0.5, "high": 0.1}}'], "low must not exceed high"),
        (['{"lr": {"choices": [0.1]}}', "--trials", "0"], "--trials"),  # typer's own usage error
    ],
)
def test_a_bad_space_or_option_exits_2_with_the_reason(fmnist: Any, args: list[str], message: str) -> None:
    result = fmnist("study", "submit", *args, "--epochs", "1")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_a_space_file_without_its_at_sign_gets_a_hint(fmnist: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    Path("space.json").write_text(GRID)
    result = fmnist("study", "submit", "space.json")
    assert result.exit_code == 2 and "write @space.json" in result.stderr


def test_unknown_studies_exit_3(fmnist: Any) -> None:
    for args in (["show", "nope"], ["cancel", "nope"]):
        result = fmnist("study", *args)
        assert result.exit_code == 3, args
        assert "404" in result.stderr and "no study with id 'nope'" in result.stderr


def test_plot_writes_each_figure(live: Live, fmnist: Any, finished: dict[str, Any], tmp_path: Path) -> None:
    assert fmnist("study", "plot", finished["id"], "--kind", "scatter").exit_code == 2
    if not figure_routes(live):
        pytest.skip("the server has no study figure routes yet (GET /v1/studies/{id}/history.svg...)")
    for kind in ("history", "importances", "parallel"):
        target = tmp_path / f"{kind}.svg"
        result = fmnist("study", "plot", finished["id"], "--kind", kind, "-o", str(target))
        assert result.exit_code == 0, result.output
        assert result.stdout == f"wrote {target}\n"
        text = target.read_text()
        assert "<svg" in text and text.rstrip().endswith("</svg>"), kind
    unknown = fmnist("study", "plot", "nope", "-o", str(tmp_path / "nope.svg"))
    assert unknown.exit_code == 3 and "nope" in unknown.stderr
    assert not (tmp_path / "nope.svg").exists()
