"""The exact text of the listings (`jobs`, `models`, `alias list`, `sweep list`, `study list`) with no row, one
row and several, against a real server and worker with fixed data; and of `fmnist --help`.

Ids, times and accuracies change from run to run: each is masked by a text of its own length, so the columns
stay where they are.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.support.live import Live, live_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

QUICK = ["--hidden-layers", "16", "--batch-size", "64", "--epochs", "2", "--seed", "1"]
LISTINGS = {
    "jobs": ("jobs", "--limit", "3"),
    "models": ("models", "--limit", "3"),
    "aliases": ("alias", "list"),
    "sweeps": ("sweep", "list"),
    "studies": ("study", "list"),
}


def masked(text: str) -> str:
    """Ids as `<id N>` (N: the order they first appear in), times, and accuracies, each as long as what it hides."""
    ids: dict[str, int] = {}

    def name(match: re.Match[str]) -> str:
        number = ids.setdefault(match.group(), len(ids) + 1)
        return f"<id {number}>".ljust(32)

    text = re.sub(r"\b[0-9a-f]{32}\b", name, text)
    text = re.sub(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", "YYYY-MM-DD hh:mm:ss", text)
    text = re.sub(r"\b[01]\.\d{4}\b", "0.####", text)
    return re.sub(r"--cursor \S+", "--cursor <cursor>", text)


SNAPSHOTS = Path(__file__).with_name("snapshots")
STAGES = ("none", "one", "several")


def snapshot(name: str, text: str) -> str:
    """The expected text in snapshots/NAME.txt; FMNIST_UPDATE_SNAPSHOTS=1 writes ``text`` there first (review the
    diff before committing it)."""
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("FMNIST_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text)
    return path.read_text()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    with live_stack(tmp_path_factory.mktemp("cli-listings"), synthetic_data_dir) as stack:
        yield stack


@pytest.fixture(scope="module")
def shown(fmnist: Any, live: Live) -> dict[tuple[str, str], str]:
    """Each listing's text with no row (a new server), one row, and several, made in one pass."""
    texts: dict[tuple[str, str], str] = {}

    def capture(stage: str, *names: str) -> None:
        for listing in names:
            result = fmnist(*LISTINGS[listing])
            assert result.exit_code == 0, result.output
            texts[listing, stage] = result.stdout

    def run(*args: str) -> dict[str, Any]:
        result = fmnist(*args, "--json")
        assert result.exit_code == 0, f"{result.output}\n{live.stack.log('worker')}"
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    capture("none", *LISTINGS)
    first = run("submit", *QUICK, "--wait")
    capture("one", "jobs", "models")
    run("alias", "set", "production", first["model_id"])
    capture("one", "aliases")
    run("sweep", "submit", *QUICK, "--grid", "lr=0.1", "--wait")
    capture("one", "sweeps")
    study = ["study", "submit", '{"lr": {"choices": [0.05, 0.3]}}', *QUICK[:-2], "--sampler", "grid"]
    run(*study, "--pruner", "none", "--trials", "1", "--seed", "3", "--wait", "--timeout", "120")
    capture("one", "studies")
    # Several: 6 jobs and models, of which the newest 3 are shown (the study's trials one at a time, so that each
    # job has a time of its own), 2 aliases, 2 sweeps, 2 studies.
    run("sweep", "submit", *QUICK, "--grid", "lr=0.05,0.3", "--wait")
    run(
        *study,
        "--pruner",
        "none",
        "--trials",
        "2",
        "--max-concurrent",
        "1",
        "--seed",
        "4",
        "--wait",
        "--timeout",
        "120",
    )
    second = run("submit", *QUICK, "--activation", "tanh", "--wait")
    run("alias", "set", "candidate", second["model_id"])
    capture("several", *LISTINGS)
    return texts


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("listing", list(LISTINGS))
def test_a_listing_reads_exactly_so(shown: dict[tuple[str, str], str], listing: str, stage: str) -> None:
    text = masked(shown[listing, stage])
    assert text == snapshot(f"{listing}-{stage}", text)


def test_no_line_ends_in_a_space(shown: dict[tuple[str, str], str]) -> None:
    for text in shown.values():
        assert [line for line in text.splitlines() if line != line.rstrip()] == []


def test_a_listing_in_json_is_the_same_page(fmnist: Any, shown: dict[tuple[str, str], str]) -> None:
    page = json.loads(fmnist("models", "--limit", "3", "--json").stdout)
    assert page["count"] == 8 and len(page["models"]) == 3
    assert [entry["id"] for entry in page["models"]] == re.findall(
        r"^│ ([0-9a-f]{32}) ", shown["models", "several"], re.M
    )


def test_help_lists_every_command_by_group_one_line_each() -> None:
    result = CliRunner().invoke(app, ["--help"], prog_name="fmnist", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert result.stdout == snapshot("help", result.stdout)


@pytest.mark.parametrize("command", [["submit"], ["jobs"], ["sample"], ["sweep", "submit"], ["keys", "create"]])
def test_a_flag_takes_no_value_in_help(command: list[str]) -> None:
    """A flag's help line names no type (typer's rich help, from 0.29 on, wrote `--help <bool>`)."""
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="fmnist", env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: fmnist {' '.join(command)} [OPTIONS]")
    assert "<bool" not in result.stdout and re.search(r"^  --help +Show this message and exit\.$", result.stdout, re.M)
    assert [line for line in result.stdout.splitlines() if line != line.rstrip()] == []
