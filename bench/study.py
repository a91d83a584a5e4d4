"""A study against the equivalent grid, and the best-mlp preset re-searched, through the real service on the
real data (an API process and one worker, SQLite).

Default: the chapter's exploration (hidden width and depth, learning rate) as a 16-point grid
(`POST /v1/sweeps`, every point to the end) and as a 16-trial study over the same ranges (`POST
/v1/studies`: TPE, the learning rate on a continuous log scale, median pruning), one after the other on one
worker. Reported per search: wall time from the submit to its end, epochs trained, the best validation
accuracy and that model's test accuracy; and the study's time as a share of the grid's.

`--best-mlp`: a study around the best-mlp preset (AdamW's learning rate and weight decay, dropout, label
smoothing; `--epochs` per trial, median pruning after a warm-up), then the winner and the preset itself
trained for the preset's full 40 epochs side by side (seed 0), so the README's claim is measured.

    .venv/bin/python -m bench.study [--device cpu|cuda] [--epochs 10] [--trials 16] [--figures docs/img]
    .venv/bin/python -m bench.study --best-mlp [--epochs 15] [--trials 12] [--confirm-epochs 40] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import client_for, markdown_table, service, wait_for

WIDTHS = [[64], [256], [1024], [256, 256]]
LR_RANGE = (0.01, 0.5)
GRID_LRS = [0.01, 0.04, 0.14, 0.5]  # LR_RANGE in four log-spaced steps


def wait_study(client: httpx.Client, study_id: str, poll: float = 0.5) -> dict[str, Any]:
    while True:
        study: dict[str, Any] = client.get(f"/v1/studies/{study_id}").json()
        if study["status"] != "running":
            return study
        time.sleep(poll)


def epochs_trained(client: httpx.Client, job_ids: list[str]) -> int:
    return sum(client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] for job_id in job_ids)


def grid_against_study(device: str, epochs: int, trials: int, figures: Path | None) -> None:
    base = {"epochs": epochs, "val_fraction": 0.1, "seed": 0}
    rows = []
    with service(device) as running, client_for(running) as client:
        started = time.perf_counter()
        sweep = client.post("/v1/sweeps", json={"base": base, "grid": {"hidden_layers": WIDTHS, "lr": GRID_LRS}}).json()
        for job in sweep["jobs"]:
            wait_for(running, client, job["id"], poll=0.05)
        grid_seconds = time.perf_counter() - started
        ranked = client.get(f"/v1/sweeps/{sweep['id']}").json()["jobs"]
        grid_epochs = epochs_trained(client, [job["id"] for job in ranked])
        rows.append(
            [
                f"grid ({len(ranked)} points)",
                f"{grid_seconds:.0f}",
                str(grid_epochs),
                "-",
                f"{ranked[0]['val_acc']:.4f}",
                f"{ranked[0]['test_acc']:.4f}",
                json.dumps(ranked[0]["params"]),
            ]
        )

        started = time.perf_counter()
        study = client.post(
            "/v1/studies",
            json={
                "base": {"epochs": epochs, "val_fraction": 0.1},
                "space": {
                    "hidden_layers": {"choices": WIDTHS},
                    "lr": {"low": LR_RANGE[0], "high": LR_RANGE[1], "log": True},
                },
                "sampler": {"type": "tpe", "n_startup_trials": 5},
                "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
                "trials": trials,
                "max_concurrent": 1,
                "seed": 0,
            },
        ).json()
        study = wait_study(client, study["id"])
        study_seconds = time.perf_counter() - started
        if figures is not None:
            figures.mkdir(parents=True, exist_ok=True)
            for kind in ("history", "importances", "parallel"):
                answer = client.get(f"/v1/studies/{study['id']}/{kind}.svg")
                answer.raise_for_status()
                (figures / f"study-{kind}.svg").write_bytes(answer.content)
        study_epochs = epochs_trained(client, [trial["job_id"] for trial in study["trials"]])
        best = study["best"]
        counts = study["counts"]
        rows.append(
            [
                f"study ({len(study['trials'])} trials, {counts.get('pruned', 0)} pruned)",
                f"{study_seconds:.0f}",
                str(study_epochs),
                f"{study_seconds / grid_seconds:.2f}",
                f"{best['val_acc']:.4f}",
                f"{best['test_acc']:.4f}",
                json.dumps(best["params"]),
            ]
        )
    print(f"the chapter's exploration, {epochs} epochs a run, on {device}, one worker")
    print(
        markdown_table(
            ["search", "seconds", "epochs trained", "time / grid's", "best val acc", "its test acc", "best params"],
            rows,
        )
    )


def best_mlp(device: str, epochs: int, trials: int, confirm_epochs: int) -> None:
    body = {
        "base": {"preset": "best-mlp", "epochs": epochs},
        "space": {
            "lr": {"low": 3e-4, "high": 3e-3, "log": True},
            "weight_decay": {"low": 0.005, "high": 0.2, "log": True},
            "dropout": {"low": 0.1, "high": 0.5},
            "label_smoothing": {"low": 0.0, "high": 0.2},
        },
        "sampler": {"type": "tpe", "n_startup_trials": 5},
        "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": epochs // 3},
        "trials": trials,
        "max_concurrent": 1,
        "seed": 0,
    }
    with service(device) as running, client_for(running) as client:
        started = time.perf_counter()
        study = client.post("/v1/studies", json=body).json()
        study = wait_study(client, study["id"], poll=2.0)
        seconds = time.perf_counter() - started
        print(f"study {study['id']}: {study['counts']} in {seconds:.0f} s")
        for trial in study["trials"]:
            print(
                f"  trial {trial['number']:2d} {trial['status']:9s} epochs {trial['progress']['epoch']:3d} "
                f"val {trial['val_acc'] or 0:.4f} {json.dumps(trial['params'])}"
            )
        best = study["best"]
        print(f"best: trial {best['number']} val {best['val_acc']:.4f} test {best['test_acc']:.4f} {best['params']}")
        # The winner and the preset at the preset's full length, side by side (same seed).
        finals = {}
        for name, fields in (("preset", {}), ("study's best", best["params"])):
            spec = {"preset": "best-mlp", "seed": 0, "epochs": confirm_epochs, **fields}
            job = client.post("/v1/jobs", json=spec).json()
            finals[name] = wait_for(running, client, job["id"], poll=0.5)
        rows = []
        for name, job in finals.items():
            model = client.get(f"/v1/models/{job['model_id']}").json()
            rows.append([name, str(model["epoch"]), f"{model['val_acc']:.4f}", f"{model['test_acc']:.4f}"])
    print(f"best-mlp re-searched: {trials} trials of {epochs} epochs on {device}; then {confirm_epochs} epochs, seed 0")
    print(markdown_table(["spec", "kept epoch", "val acc", "test acc"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--best-mlp", action="store_true", help="re-search the best-mlp preset")
    parser.add_argument("--figures", type=Path, default=None, help="write the study's three figures here")
    parser.add_argument("--confirm-epochs", type=int, default=40, help="--best-mlp: the side-by-side runs' length")
    args = parser.parse_args()
    if args.best_mlp:
        best_mlp(args.device, args.epochs or 15, args.trials or 12, args.confirm_epochs)
    else:
        grid_against_study(args.device, args.epochs or 10, args.trials or 16, args.figures)


if __name__ == "__main__":
    main()
