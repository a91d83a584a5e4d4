"""Regenerates the README's figures (docs/img/*.svg) from a real run: the d2l recipe trained on the real
data, the chapter's hidden-width comparison (64, 256, 1024) and its learning-rate comparison (0.01, 0.1,
0.5), one test-image grid and the activation functions. The 256-wide, lr 0.1 job is the default recipe
itself and serves all three of its figures.

    .venv/bin/python -m bench.figures [--url http://host:8000 --api-key KEY] [--epochs 10] [--out docs/img]

Without --url it starts an API and a CPU worker of its own on a throwaway FMNIST_HOME (FMNIST_DATA_DIR or
../shared/data/fashion-mnist). Every job has a fixed seed, so a rerun trains the same networks.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, service

DEFAULT = {"hidden_layers": [256], "lr": 0.1}
WIDTHS = [[64], [256], [1024]]
RATES = [0.01, 0.1, 0.5]
FINAL = ("succeeded", "failed", "cancelled")


@contextlib.contextmanager
def api(url: str | None, api_key: str | None) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if url:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            yield client
        return
    with service("cpu") as running, httpx.Client(base_url=running.url, timeout=120) as client:
        yield client


def submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    response.raise_for_status()
    job_id: str = response.json()["id"]
    return job_id


def wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in FINAL:
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
            return job
        time.sleep(1)


def save(client: httpx.Client, path: str, target: Path, **params: str) -> None:
    response = client.get(path, params=params)
    response.raise_for_status()
    target.write_bytes(response.content)
    print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: {len(response.content):,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service; default: start one here")
    parser.add_argument("--api-key", help="a key with the train and predict scopes, when the service needs one")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = {"epochs": args.epochs, "seed": args.seed}
    started = time.perf_counter()
    with api(args.url, args.api_key) as client:
        by_width = {str(width): submit(client, {**base, **DEFAULT, "hidden_layers": width}) for width in WIDTHS}
        default_job = by_width[str(DEFAULT["hidden_layers"])]
        by_rate = {
            rate: default_job if rate == DEFAULT["lr"] else submit(client, {**base, **DEFAULT, "lr": rate})
            for rate in RATES
        }
        finished = {job_id: wait(client, job_id) for job_id in dict.fromkeys([*by_width.values(), *by_rate.values()])}
        for job_id, job in finished.items():
            rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
            spec = job["spec"]
            print(
                f"hidden {spec['hidden_layers']} lr {spec['lr']}: test acc {rows[-1]['test_acc']:.4f}, "
                f"{sum(row['seconds'] for row in rows):.0f} s training"
            )
        save(client, f"/v1/jobs/{default_job}/curves.svg", args.out / "curves.svg")
        save(client, "/v1/compare.svg", args.out / "compare-width.svg", jobs=",".join(by_width.values()))
        save(client, "/v1/compare.svg", args.out / "compare-lr.svg", jobs=",".join(by_rate.values()))
        save(client, f"/v1/models/{finished[default_job]['model_id']}/samples.svg", args.out / "samples.svg")
        save(client, "/v1/activations.svg", args.out / "activations.svg")
    print(f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
