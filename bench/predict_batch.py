"""Images/s for /predict's batch forms with predictions on each device, side by side in one run.

One API process per device (`FMNIST_PREDICT_DEVICE=cpu`, and `cuda` when a GPU is present), the same
trained model, driven in interleaved rounds by a Python load generator (httpx, N requests in flight):
64 PNG files per multipart request, and 256 pixel arrays per JSON request. Needs no wrk, so it also runs
on hosts without it (the GPU machine).

    python -m bench.predict_batch [--devices cpu,cuda] [--duration 8] [--rounds 3] [--in-flight 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.common import FMNIST, data_dir, free_port, markdown_table
from bench.predict_http import BOUNDARY, cpu_seconds, multipart, trained_service_home, wait_ready
from service.settings import Settings


def prepare(home: Path) -> tuple[Settings, dict[str, tuple[str, bytes, str, int]]]:
    """A trained model (2 epochs of the default spec) and the two batch bodies."""
    settings, test, pngs = trained_service_home(home)
    forms = {
        "64 PNG files per request": (
            "/v1/predict",
            multipart([("files", png) for png in pngs]),
            f"multipart/form-data; boundary={BOUNDARY}",
            64,
        ),
        "256 pixel arrays per request": (
            "/v1/predict/pixels",
            json.dumps({"images": np.asarray(test).tolist()}).encode(),
            "application/json",
            256,
        ),
    }
    return settings, forms


async def load(url: str, body: bytes, content_type: str, in_flight: int, duration: float) -> dict[str, float]:
    """Requests completed and failed in ``duration`` seconds with ``in_flight`` of them always open."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers={"Content-Type": content_type})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.median(latencies)) * 1e3 if latencies else float("nan"),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--devices", default=default_devices, help="FMNIST_PREDICT_DEVICE values to compare")
    parser.add_argument("--duration", type=float, default=8, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    parser.add_argument("--in-flight", type=int, default=8, help="requests open at once")
    args = parser.parse_args()
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="fmnist-batch-") as scratch:
        settings, forms = prepare(Path(scratch))
        env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(data_dir())}
        servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        try:
            for device in devices:
                port = free_port()
                process = subprocess.Popen(
                    [*FMNIST, "serve", "--port", str(port), "--log-level", "warning"],
                    env={**env, "FMNIST_PREDICT_DEVICE": device},
                )
                servers[device] = (f"http://127.0.0.1:{port}", process)
            for url, _ in servers.values():
                wait_ready(url, "/readyz")
                for path, body, content_type, _n in forms.values():  # warm-up: model load, CUDA context
                    asyncio.run(load(url + path, body, content_type, args.in_flight, 1.0))
            runs: dict[tuple[str, str], list[dict[str, float]]] = {}
            for _ in range(args.rounds):
                for form, (path, body, content_type, _n) in forms.items():
                    for device, (url, process) in servers.items():
                        before = cpu_seconds(process.pid)
                        result = asyncio.run(load(url + path, body, content_type, args.in_flight, args.duration))
                        result["cpu_s"] = cpu_seconds(process.pid) - before
                        runs.setdefault((form, device), []).append(result)
        finally:
            for _, process in servers.values():
                process.terminate()
                process.wait(timeout=30)
    reference = devices[0]
    rows = []
    for (form, device), results in runs.items():
        images = forms[form][3]
        ratios = [r["rps"] / b["rps"] for r, b in zip(results, runs[(form, reference)], strict=True)]
        rows.append(
            [
                form,
                device,
                f"{np.median([r['rps'] for r in results]):,.1f}",
                f"{np.median([r['rps'] for r in results]) * images:,.0f}",
                f"{np.median([r['p50'] for r in results]):.1f}",
                str(int(sum(r["errors"] for r in results))),
                f"{np.median([r['cpu_s'] / args.duration for r in results]):.2f}",
                f"{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
            ]
        )
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(
        f"{args.in_flight} requests in flight, {args.duration:g} s x {args.rounds} interleaved rounds, medians; "
        f"{os.cpu_count()} CPU cores, {name}; ratio: images/s against FMNIST_PREDICT_DEVICE={reference}"
    )
    print(
        markdown_table(
            ["batch form", "predict device", "requests/s", "images/s", "p50 ms", "errors", "server CPU cores", "ratio"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
