"""The `fmnist` commands that call a server, against a real server process and a real worker process.

Most run in-process (typer's CliRunner, real HTTP); a few run the installed `fmnist` script, as a shell would.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import Result

from service.schemas import ModelCardPublic, ModelEvaluationPublic
from tests.support.live import TINY, Live, live_stack
from tests.support.servers import free_port
from tests.test_e2e import FMNIST

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LONG = {"hidden_layers": [16], "batch_size": 4, "epochs": 1000, "seed": 2}
TINY_FLAGS = ["--hidden-layers", "16", "--batch-size", "64", "--epochs", "3", "--seed", "1"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    with live_stack(tmp_path_factory.mktemp("cli"), synthetic_data_dir) as stack:
        yield stack


@pytest.fixture(scope="module")
def trained(fmnist: Any) -> dict[str, Any]:
    result = fmnist("submit", *TINY_FLAGS, "--wait", "--json")
    assert result.exit_code == 0, result.output
    job: dict[str, Any] = json.loads(result.stdout)
    assert fmnist("alias", "set", "production", job["model_id"]).exit_code == 0
    return job


def test_submit_wait_reports_each_epoch_and_prints_the_job(fmnist: Any) -> None:
    result = fmnist("submit", *TINY_FLAGS, "--epochs", "4", "--activation", "tanh", "--wait")
    assert result.exit_code == 0, result.output
    # Not a terminal: one line per epoch on stderr, then the job on stdout.
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("loss" in line and "test acc" in line and "ETA" in line for line in lines)
    assert "succeeded" in result.stderr.splitlines()[-1]
    assert "succeeded" in result.stdout and "[16] tanh sgd lr 0.1" in result.stdout and "test acc" in result.stdout


def test_the_job_commands_in_json(fmnist: Any, trained: dict[str, Any]) -> None:
    job_id = trained["id"]
    assert trained["status"] == "succeeded" and trained["spec"]["hidden_layers"] == [16]

    status = fmnist("status", job_id, "--json")
    assert status.exit_code == 0 and json.loads(status.stdout) == trained
    metrics = json.loads(fmnist("metrics", job_id, "--json").stdout)
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2, 3]
    waited = fmnist("wait", job_id, "--json")
    assert waited.exit_code == 0 and json.loads(waited.stdout)["status"] == "succeeded"
    listed = json.loads(fmnist("jobs", "--status", "succeeded", "--limit", "100", "--json").stdout)
    assert job_id in {job["id"] for job in listed["data"]}


def test_the_job_commands_as_tables(fmnist: Any, trained: dict[str, Any]) -> None:
    job_id = trained["id"]
    jobs = fmnist("jobs")
    assert jobs.exit_code == 0 and job_id in jobs.stdout and "succeeded" in jobs.stdout
    status = fmnist("status", job_id)
    assert job_id in status.stdout
    assert "epoch 3 of 3" in status.stdout
    metrics = fmnist("metrics", job_id)
    assert "train loss" in metrics.stdout
    assert len([line for line in metrics.stdout.splitlines() if line.startswith("│")]) == 3, "a row per epoch"


def test_submit_from_a_preset_and_a_spec_file(fmnist: Any, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**TINY, "optimizer": "adam", "lr": 0.01}))
    result = fmnist("submit", "--spec", str(spec_file), "--lr", "0.02", "--hidden-layers", "", "--json")
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)["spec"]
    assert spec["optimizer"] == "adam" and spec["lr"] == 0.02 and spec["hidden_layers"] == []

    preset = fmnist("submit", "--preset", "d2l-mlp", "--epochs", "1", "--hidden-layers", "8,4", "--nesterov", "--json")
    assert preset.exit_code == 2, "nesterov needs momentum: the server's 422"
    assert "nesterov" in preset.stderr.lower()
    preset = fmnist("submit", "--preset", "d2l-mlp", "--epochs", "1", "--hidden-layers", "[8, 4]", "--json")
    body = json.loads(preset.stdout)
    assert body["preset"] == "d2l-mlp" and body["spec"]["hidden_layers"] == [8, 4] and body["spec"]["epochs"] == 1
    assert fmnist("wait", body["id"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "lr: Input should be greater than 0"),
        (["--hidden-layers", "wide"], "--hidden-layers 'wide'"),
        (["--activation", "swish"], "swish"),  # typer's own usage error
        (["--preset", "unknown"], "preset"),
    ],
)
def test_an_invalid_spec_exits_2_with_the_reason(fmnist: Any, args: list[str], message: str) -> None:
    result = fmnist("submit", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_wait_exits_1_when_the_job_fails_or_is_cancelled(fmnist: Any) -> None:
    failing = json.loads(fmnist("submit", *TINY_FLAGS, "--epochs", "1000", "--max-seconds", "0.2", "--json").stdout)
    result = fmnist("wait", failing["id"], "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "failed"

    spec = ["--hidden-layers", "16", "--batch-size", "4", "--epochs", "1000"]
    job = json.loads(fmnist("submit", *spec, "--json").stdout)
    timed_out = fmnist("wait", job["id"], "--timeout", "0.5")
    assert timed_out.exit_code == 6 and "timeout" in timed_out.stderr
    assert fmnist("cancel", job["id"]).exit_code == 0
    cancelled = fmnist("wait", job["id"])
    assert cancelled.exit_code == 1 and "cancelled" in cancelled.stdout
    again = fmnist("cancel", job["id"])
    assert again.exit_code == 2 and "already cancelled" in again.stderr


def test_tag_then_list_by_tag_sort_and_spec(fmnist: Any) -> None:
    job = json.loads(fmnist("submit", *TINY_FLAGS, "--wait", "--json").stdout)
    job_id = job["id"]
    tagged = fmnist("tag", job_id, "team=cli", "stage=baseline", "--note", "the first run")
    assert tagged.exit_code == 0, tagged.output
    assert "team=cli" in tagged.stdout and "stage=baseline" in tagged.stdout and "the first run" in tagged.stdout
    removed = json.loads(fmnist("tag", job_id, "--remove", "stage", "--json").stdout)
    assert (removed["tags"], removed["note"]) == ({"team": "cli"}, "the first run")
    assert json.loads(fmnist("tag", job_id, "--clear-note", "--json").stdout)["note"] is None
    assert "team=cli" in fmnist("tag", job_id).stdout, "alone, it shows the labels"
    assert "team=cli" in fmnist("status", job_id).stdout

    args = ["--tag", "team:cli", "--sort", "-test_acc", "--where", "hidden_layers=16", "--where", "optimizer=sgd"]
    listed = json.loads(fmnist("jobs", *args, "--json").stdout)
    assert [entry["id"] for entry in listed["data"]] == [job_id] and listed["count"] == 1
    assert json.loads(fmnist("jobs", "--tag", "team:cli", "--where", "optimizer=adam", "--json").stdout)["data"] == []
    table = fmnist("jobs", "--tag", "team", "--status", "succeeded")
    assert table.exit_code == 0 and "test acc" in table.stdout and f"{job['test_acc']:.4f}" in table.stdout


def test_jobs_pages_on_with_the_printed_cursor(fmnist: Any, trained: dict[str, Any]) -> None:
    first = fmnist("jobs", "--limit", "1", "--sort", "test_acc")
    assert first.exit_code == 0 and first.stdout.startswith("job 1 of ")
    cursor = first.stdout.split("more: --cursor ", 1)[1].split()[0]
    second = fmnist("jobs", "--limit", "1", "--sort", "test_acc", "--cursor", cursor, "--json")
    listed = json.loads(fmnist("jobs", "--limit", "2", "--sort", "test_acc", "--json").stdout)
    assert json.loads(second.stdout)["data"][0]["id"] == listed["data"][1]["id"]
    assert "1 job after the cursor (" in fmnist("jobs", "--limit", "1", "--sort", "test_acc", "--cursor", cursor).stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["jobs", "--where", "optimiser=adam"], 2, "no spec field 'optimiser'"),
        (["jobs", "--where", "hidden_layers=wide"], 2, "comma-separated numbers"),
        (["jobs", "--where", "lr=fast"], 2, "lr: Input should be a valid number"),
        (["jobs", "--sort", "accuracy"], 2, "sort: Input should be"),
        (["jobs", "--tag", "bad key"], 2, "tag.0: String should match pattern"),
        (["jobs", "--cursor", "garbled"], 2, "not a cursor"),
        (["tag", "nope", "a=b"], 3, "no job with id 'nope'"),
        (["tag", "nope", "a"], 2, "write KEY=VALUE"),
        (["tag", "nope", "a=b", "--remove", "a"], 2, "also set here"),
        (["tag", "nope", "--note", "x", "--clear-note"], 2, "give one"),
    ],
)
def test_bad_listing_and_tag_arguments_exit_with_the_reason(
    fmnist: Any, args: list[str], code: int, message: str
) -> None:
    result = fmnist(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr


def test_tag_limits_are_the_server_s(fmnist: Any, trained: dict[str, Any]) -> None:
    result = fmnist("tag", trained["id"], "bad key=x")
    assert result.exit_code == 2 and "String should match pattern" in result.stderr


def test_not_found_exits_3(fmnist: Any) -> None:
    for args in (["status", "nope"], ["wait", "nope"], ["metrics", "nope"], ["sweep", "status", "nope"]):
        result = fmnist(*args)
        assert result.exit_code == 3, args
        assert "404" in result.stderr and "nope" in result.stderr


def test_a_missing_unknown_or_too_narrow_key_exits_4(live: Live, fmnist: Any) -> None:
    missing = fmnist("jobs", env={"FMNIST_API_KEY": None})
    assert missing.exit_code == 4 and "FMNIST_API_KEY" in missing.stderr
    assert fmnist("jobs", "--api-key", "wrong").exit_code == 4
    narrow = fmnist("submit", *TINY_FLAGS, "--api-key", live.predict_key)
    assert narrow.exit_code == 4 and "lacks the `train` scope" in narrow.stderr
    assert fmnist("models", "--api-key", live.predict_key).exit_code == 0


def png(row: int) -> bytes:
    image = np.full((28, 28), 10, dtype=np.uint8)
    image[row : row + 3, 4:24] = 230
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_models_and_aliases(fmnist: Any, trained: dict[str, Any], tmp_path: Path) -> None:
    paths = []
    for row in (2, 8, 14):
        path = tmp_path / f"garment-{row}.png"
        path.write_bytes(png(row))
        paths.append(str(path))
    result = fmnist("predict", *paths, "--model", "production", "--top-k", "2", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["model_id"] == trained["model_id"]
    assert [p["image"] for p in body["predictions"]] == paths
    assert all(len(p["top_k"]) == 2 for p in body["predictions"])
    table = fmnist("predict", paths[0])
    assert table.exit_code == 0 and paths[0] in table.stdout and "probability" in table.stdout
    assert fmnist("predict", str(tmp_path / "missing.png")).exit_code == 2

    models = fmnist("models")
    assert trained["model_id"] in models.stdout and "production" in models.stdout
    assert fmnist("alias", "set", "staging", "production").exit_code == 0
    aliases = json.loads(fmnist("alias", "list", "--json").stdout)
    assert {"production", "staging"} <= {a["name"] for a in aliases}
    assert "staging" in fmnist("alias", "list").stdout
    assert fmnist("alias", "rm", "staging").exit_code == 0
    assert fmnist("alias", "rm", "staging").exit_code == 3
    assert fmnist("alias", "set", "staging", "no-such-model").exit_code == 3


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_predict_prints_the_good_ones_and_an_error_line_per_bad_file(
    fmnist: Any, trained: dict[str, Any], tmp_path: Path
) -> None:
    good, other = tmp_path / "good.png", tmp_path / "other.png"
    good.write_bytes(png(2))
    other.write_bytes(png(14))
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not a picture")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png(8)[:60])
    blank = tmp_path / "blank.png"
    blank.write_bytes(_blank_png())

    result = fmnist("predict", str(good), str(notes), str(other), str(truncated), str(blank))
    assert result.exit_code == 2, result.output
    assert str(good) in result.stdout and str(other) in result.stdout and "probability" in result.stdout
    assert not {str(notes), str(truncated), str(blank)} & set(result.stdout.split())
    lines = error_lines(result)
    assert len(lines) == 3, result.stderr
    assert lines[0].startswith(f"error: {notes}: 415 Unsupported Media Type: ")
    assert lines[1].startswith(f"error: {truncated}: 400 Bad Request: ")
    assert lines[2].startswith(f"error: {blank}: 422 Unprocessable")
    assert not any("file 1 (" in line for line in lines), "the path names the file; the server's numbering goes"

    as_json = fmnist("predict", str(good), str(notes), "--json")
    assert as_json.exit_code == 2
    body = json.loads(as_json.stdout)
    assert body["failed"] == 1
    assert [entry["image"] for entry in body["predictions"]] == [str(good), str(notes)]
    assert body["predictions"][0]["class_name"] and body["predictions"][1]["error"]["status"] == 415
    assert body["predictions"][1]["error"]["detail"].startswith("file 1 ('notes.txt'): ")
    assert len(error_lines(as_json)) == 1


def test_predict_with_no_usable_file_prints_no_table(fmnist: Any, trained: dict[str, Any], tmp_path: Path) -> None:
    empty, notes = tmp_path / "empty.png", tmp_path / "notes.txt"
    empty.write_bytes(b"")
    notes.write_text("not a picture")
    result = fmnist("predict", str(empty), str(notes))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = error_lines(result)
    assert [line.split(": ")[1] for line in lines] == [str(empty), str(notes)]
    assert "400 Bad Request" in lines[0] and "415 Unsupported Media Type" in lines[1]


def _blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), 90, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_sweeps(fmnist: Any) -> None:
    result = fmnist(
        "sweep", "submit", *TINY_FLAGS, "--epochs", "2", "--grid", "lr=0.05,0.2", "--grid", "hidden_layers=[[8],[16]]",
        "--wait", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)
    assert len(sweep["jobs"]) == 4 and sweep["counts"]["succeeded"] == 4
    assert sweep["id"] in fmnist("sweep", "list").stdout
    status = fmnist("sweep", "status", sweep["id"])
    assert status.exit_code == 0 and status.stdout.count("succeeded") >= 4

    queued = fmnist("sweep", "submit", "--hidden-layers", "16", "--batch-size", "4", "--epochs", "1000",
                    "--grid", "seed=1,2", "--json")  # fmt: skip
    sweep_id = json.loads(queued.stdout)["id"]
    assert fmnist("sweep", "cancel", sweep_id).exit_code == 0
    unknown_field = fmnist("sweep", "submit", "--grid", "lr=0.1", "--grid", "nope=1", "--json")
    assert unknown_field.exit_code == 2 and "nope" in unknown_field.stderr
    assert fmnist("sweep", "submit", "--grid", "lr").exit_code == 2


def test_the_installed_script_reads_its_url_and_key_from_the_environment(live: Live, trained: dict[str, Any]) -> None:
    env = {"PATH": "/usr/bin:/bin", "FMNIST_URL": live.url, "FMNIST_API_KEY": live.admin_key}
    listed = subprocess.run([*FMNIST, "jobs", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert trained["id"] in {job["id"] for job in json.loads(listed.stdout)["data"]}

    nowhere = {**env, "FMNIST_URL": f"http://127.0.0.1:{free_port()}"}
    down = subprocess.run([*FMNIST, "status", trained["id"]], env=nowhere, capture_output=True, text=True, timeout=60)
    assert down.returncode == 5
    assert down.stderr.startswith("error: no answer from") and "FMNIST_URL" in down.stderr


def test_eval_shows_a_models_scores_per_class_and_its_confusions(fmnist: Any, trained: dict[str, Any]) -> None:
    result = fmnist("eval", "production")
    assert result.exit_code == 0, result.output
    assert f"model {trained['model_id']}, test split" in result.stdout
    assert "accuracy" in result.stdout and "expected calibration error" in result.stdout
    assert "per class" in result.stdout and "Ankle boot" in result.stdout and "most confused" in result.stdout
    as_json = fmnist("eval", trained["model_id"], "--json")
    assert as_json.exit_code == 0, as_json.output
    evaluation = ModelEvaluationPublic.model_validate_json(as_json.stdout)
    listed = json.loads(fmnist("models", "--json", "--limit", "500").stdout)["models"]
    [model] = [entry for entry in listed if entry["id"] == trained["model_id"]]
    assert evaluation.model_id == trained["model_id"] and evaluation.accuracy == model["test_acc"]
    assert sum(map(sum, evaluation.confusion_matrix)) == evaluation.samples
    assert evaluation.validation is None  # the job held no validation out


def test_eval_of_a_split_the_job_did_not_hold_out_or_of_no_model_says_so(fmnist: Any, trained: dict[str, Any]) -> None:
    result = fmnist("eval", trained["model_id"], "--split", "validation")
    assert result.exit_code == 2 and error_lines(result) == [
        f"error: model {trained['model_id']} has no validation split: its job held none out"
    ]
    missing = fmnist("eval", "no-such-model")
    assert missing.exit_code == 3 and "no-such-model" in missing.stderr


def test_card_prints_what_the_model_is_how_it_was_made_and_its_limits(fmnist: Any, trained: dict[str, Any]) -> None:
    result = fmnist("card", "production")
    assert result.exit_code == 0, result.output
    out = result.stdout
    model_id, job_id = trained["model_id"], trained["id"]
    assert out.splitlines()[0] == f"model {model_id} (production): 784-16-10 relu, sgd lr 0.1, 3 epochs"
    assert "epoch 3: the last trained, no validation split to choose by (3 of 3 planned epochs trained)" in out
    assert f"{16 * 784 + 16 + 16 * 10 + 10:,}" in out
    lines = {line.split(maxsplit=1)[0]: line for line in out.splitlines() if line.strip()}
    assert job_id in lines["job"] and "1 of 3" in lines["attempts"] and "from scratch" in out
    for name in trained["spec"]:  # every spec field, whichever the spec has
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert "data train-images-idx3-ubyte" in out and trained["provenance"]["code_version"] in out
    assert f"model {model_id}, test split" in out and "per class" in out, "the evaluation, as fmnist eval shows it"
    assert "28x28 grey, a light garment on a dark background" in out
    assert "known limits: accuracy on uploads, from bench.upload_accuracy" in out
    assert "RGBA cut-out, transparent background" in out and "0.8330" in out

    as_json = fmnist("card", model_id, "--json")
    assert as_json.exit_code == 0, as_json.output
    card = ModelCardPublic.model_validate_json(as_json.stdout)
    assert card.model_id == model_id and card.lineage.job_id == job_id and card.aliases == ["production"]
    assert card.kept_epoch.reason == "last" and card.kept_epoch.epoch == 3
    assert card.provenance.seed == 1 and card.evaluation.accuracy == card.kept_epoch.test_acc

    missing = fmnist("card", "no-such-model")
    assert missing.exit_code == 3 and error_lines(missing) == [
        "error: 404 Not Found: no model or alias named 'no-such-model'"
    ]
