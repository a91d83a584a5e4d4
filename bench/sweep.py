"""Sweep throughput, from the submit to the last `succeeded`, through the real service.

Default: a 12-point grid (the d2l chapter's width, depth, learning rate and activation experiments) on one
device, one job at a time against N at once (`fmnist worker --concurrency N`).

`--packed`: an lr x seed sweep of one shape (the default [256] recipe; 8 points by default), with packing
off (FMNIST_PACK_MAX=1: one job after another) against on (FMNIST_PACK_MAX = the sweep's size: one pack),
interleaved round by round; the ratio is taken pair by pair.

    .venv/bin/python -m bench.sweep [--device cpu|cuda] [--concurrency 4] [--epochs 2]
    .venv/bin/python -m bench.sweep --packed [--points 8] [--epochs 2] [--rounds 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import client_for, markdown_table, service, wait_for

GRID = {"hidden_layers": [[256], [1024], [256, 256]], "lr": [0.1, 0.5], "activation": ["relu", "tanh"]}


LRS = [0.05, 0.1, 0.2, 0.4]


def run_sweep(
    device: str,
    concurrency: int,
    epochs: int,
    grid: dict[str, list[Any]] = GRID,
    env: dict[str, str] | None = None,
) -> tuple[float, float]:
    """Seconds from the submit to the last job's end, and the best test accuracy."""
    with service(device, concurrency=concurrency, extra_env=env) as running, client_for(running) as client:
        started = time.perf_counter()
        base = {"epochs": epochs} if "seed" in grid else {"epochs": epochs, "seed": 0}
        sweep = client.post("/v1/sweeps", json={"base": base, "grid": grid}).json()
        for job in sweep["jobs"]:
            if wait_for(running, client, job["id"], poll=0.02)["status"] != "succeeded":
                raise RuntimeError(f"sweep job {job['id']} did not succeed")
        seconds = time.perf_counter() - started
        best = client.get(f"/v1/sweeps/{sweep['id']}").json()["jobs"][0]["test_acc"]
    return seconds, best


def packed_comparison(device: str, points: int, epochs: int, rounds: int) -> None:
    grid = {"lr": LRS[: min(points, len(LRS))], "seed": list(range(max(1, points // len(LRS))))}
    size = len(grid["lr"]) * len(grid["seed"])
    seconds: dict[int, list[float]] = {1: [], size: []}
    best: dict[int, float] = {}
    for _ in range(rounds):
        for pack_max in seconds:
            elapsed, best[pack_max] = run_sweep(device, 1, epochs, grid, {"FMNIST_PACK_MAX": str(pack_max)})
            seconds[pack_max].append(elapsed)
    ratios = [off / on for off, on in zip(seconds[1], seconds[size], strict=True)]
    rows = [
        [
            "off (one job after another)" if pack_max == 1 else f"on (FMNIST_PACK_MAX={pack_max})",
            f"{statistics.median(runs):.1f}",
            f"{size * 60 / statistics.median(runs):.0f}",
            "1.00x" if pack_max == 1 else f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
            f"{best[pack_max]:.4f}",
        ]
        for pack_max, runs in seconds.items()
    ]
    print(f"{size}-point lr x seed sweep, [256], {epochs} epochs, on {device}; {rounds} rounds, medians")
    print(markdown_table(["packing", "seconds", "models/minute", "throughput vs off", "best test acc"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--packed", action="store_true", help="packing off against on, for an lr x seed sweep")
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.packed:
        packed_comparison(args.device, args.points, args.epochs, args.rounds)
        return
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
