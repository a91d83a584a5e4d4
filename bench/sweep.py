"""Sweep throughput: a 12-point grid (the d2l chapter's width, depth, learning rate and activation
experiments) on one device, one job at a time against N at once (`fmnist worker --concurrency N`).

    .venv/bin/python -m bench.sweep [--device cpu|cuda] [--concurrency 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time

from bench.common import client_for, markdown_table, service, wait_for

GRID = {"hidden_layers": [[256], [1024], [256, 256]], "lr": [0.1, 0.5], "activation": ["relu", "tanh"]}


def run_sweep(device: str, concurrency: int, epochs: int) -> tuple[float, float]:
    with service(device, concurrency=concurrency) as running, client_for(running) as client:
        started = time.perf_counter()
        sweep = client.post("/v1/sweeps", json={"base": {"epochs": epochs, "seed": 0}, "grid": GRID}).json()
        for job in sweep["jobs"]:
            if wait_for(running, client, job["id"], poll=0.02)["status"] != "succeeded":
                raise RuntimeError(f"sweep job {job['id']} did not succeed")
        seconds = time.perf_counter() - started
        best = client.get(f"/v1/sweeps/{sweep['id']}").json()["jobs"][0]["test_acc"]
    return seconds, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    rows = []
    baseline = None
    for concurrency in (1, args.concurrency):
        seconds, best = run_sweep(args.device, concurrency, args.epochs)
        baseline = baseline or seconds
        rows.append(
            [
                str(concurrency),
                f"{seconds:.1f}",
                f"{12 * 60 / seconds:.1f}",
                f"{baseline / seconds:.2f}x",
                f"{best:.4f}",
            ]
        )
    print(f"12-point sweep, {args.epochs} epochs each, on {args.device}")
    print(markdown_table(["concurrency", "seconds", "jobs/minute", "speed-up", "best test acc"], rows))


if __name__ == "__main__":
    main()
