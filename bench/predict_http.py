"""/v1/predict under load: wrk (a C load generator) at concurrency 32 against the service and, in the
same run, against a bare FastAPI app (bench/bare_app.py, same uvicorn settings) that takes the same
upload and returns a constant. Then images/s for the batch forms (64 files per request; 256 pixel
arrays per request).

Needs wrk (Debian: apt-get install wrk) and FMNIST_DATA_DIR.

    .venv/bin/python -m bench.predict_http [--duration 10] [--rounds 3] [--connections 32] [--max-wait-ms 0,1,2]

The runs against each server are interleaved round by round, so that a slow spell on a shared machine
hits every endpoint; the table shows medians and the ratio's range.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from bench.common import FMNIST, data_dir, free_port, markdown_table
from models.data import load_fashion_mnist
from models.spec import TrainingSpec
from service.jobs import queue
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker

BOUNDARY = "fmnistbenchboundary"


def multipart(fields: list[tuple[str, bytes]]) -> bytes:
    parts = []
    for index, (name, payload) in enumerate(fields):
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{index}.png"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + payload
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def lua_script(folder: Path, name: str, body: bytes, content_type: str) -> Path:
    body_file = folder / f"{name}.body"
    body_file.write_bytes(body)
    script = folder / f"{name}.lua"
    script.write_text(
        f'local f = io.open("{body_file}", "rb")\nlocal body = f:read("*all")\nf:close()\n'
        f'wrk.method = "POST"\nwrk.body = body\nwrk.headers["Content-Type"] = "{content_type}"\n'
    )
    return script


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    output = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", output, re.M)
        assert match, output
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = (int(errors.group(1)) if errors else 0) + (sum(map(int, socket.groups())) if socket else 0)
    return {"rps": requests, "p50": latency("50"), "p99": latency("99"), "errors": failed}


def wait_ready(url: str, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int, script: Path, connections: int, duration: int) -> dict[str, float]:
    """One wrk run, with the server's CPU time per request beside it."""
    before = cpu_seconds(pid)
    result = run_wrk(url, script, connections, duration)
    result["cpu_us"] = (cpu_seconds(pid) - before) / max(1.0, result["rps"] * duration) * 1e6
    return result


def median(values: list[float]) -> float:
    return float(np.median(values))


def trained_service_home(home: Path) -> tuple[Settings, np.ndarray, list[bytes]]:
    """A service home with one trained model (2 epochs of the default spec); 256 test images as arrays
    and the first 64 as PNG files."""
    settings = Settings(home=home / "home", data_dir=data_dir())
    migrations.upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    queue.enqueue_job(db, TrainingSpec(epochs=2, seed=0), max_attempts=1)
    Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    db.dispose()
    test = load_fashion_mnist(data_dir(), home / "cache").test_images[:256].numpy()
    pngs = []
    for image in test[:64]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return settings, test, pngs


def prepare(home: Path) -> tuple[Settings, Path, Path, Path]:
    """A trained model and the three request bodies, as wrk scripts."""
    settings, test, pngs = trained_service_home(home)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    single = lua_script(home, "single", multipart([("file", pngs[0])]), content_type)
    files64 = lua_script(home, "files64", multipart([("files", png) for png in pngs]), content_type)
    pixels = lua_script(home, "pixels", json.dumps({"images": np.asarray(test).tolist()}).encode(), "application/json")
    return settings, single, files64, pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="bare/service runs, interleaved; medians reported")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--max-wait-ms",
        default="",
        help="comma-separated FMNIST_PREDICT_MAX_WAIT_MS values to compare (default: the service's default)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    waits = [w.strip() for w in args.max_wait_ms.split(",") if w.strip()] or [None]
    with tempfile.TemporaryDirectory(prefix="fmnist-predict-") as scratch:
        home = Path(scratch)
        settings, single, files64, pixels = prepare(home)
        env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(data_dir())}
        uvicorn_flags = ["--log-level", "warning"]
        servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        try:
            bare_port = free_port()
            servers["bare FastAPI (constant)"] = (
                f"http://127.0.0.1:{bare_port}",
                subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(bare_port), *uvicorn_flags],
                    env=env,
                ),
            )
            for wait in waits:
                port = free_port()
                name = "service /v1/predict" + (f", max wait {wait} ms" if wait is not None else "")
                extra = {"FMNIST_PREDICT_MAX_WAIT_MS": wait} if wait is not None else {}
                servers[name] = (
                    f"http://127.0.0.1:{port}",
                    subprocess.Popen([*FMNIST, "serve", "--port", str(port), *uvicorn_flags], env={**env, **extra}),
                )
            for name, (url, _) in servers.items():
                wait_ready(url, "/docs" if name.startswith("bare") else "/readyz")
                run_wrk(url + "/v1/predict", single, args.connections, 2)  # warm-up
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for _ in range(args.rounds):  # interleaved: a slow spell on a shared machine hits every endpoint
                for name, (url, process) in servers.items():
                    runs[name].append(
                        measure(url + "/v1/predict", process.pid, single, args.connections, args.duration)
                    )
            lone = {name: run_wrk(url + "/v1/predict", single, 1, args.duration) for name, (url, _) in servers.items()}
            service_url, _ = servers[next(name for name in servers if not name.startswith("bare"))]
            batch64 = run_wrk(service_url + "/v1/predict", files64, 8, args.duration)
            arrays = run_wrk(service_url + "/v1/predict/pixels", pixels, 8, args.duration)
        finally:
            for _, process in servers.values():
                process.terminate()
                process.wait(timeout=30)
    bare_runs = runs["bare FastAPI (constant)"]
    rows = []
    for name, results in runs.items():
        ratios = [r["rps"] / b["rps"] for r, b in zip(results, bare_runs, strict=True)]
        rows.append(
            [
                name,
                f"{median([r['rps'] for r in results]):,.0f}",
                f"{median([r['p50'] for r in results]):.1f}",
                f"{median([r['p99'] for r in results]):.1f}",
                str(int(sum(r["errors"] for r in results))),
                f"{median([r['cpu_us'] for r in results]):,.0f}",
                f"{median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%})",
                f"{lone[name]['p50']:.2f}",
            ]
        )
    print(
        f"wrk -t2 -c{args.connections} -d{args.duration}s x {args.rounds} interleaved rounds, one 28x28 PNG per "
        "request; medians (ratio: median of the per-round ratios, and their range). Last column: one client, "
        "one request at a time"
    )
    print(
        markdown_table(
            [
                "endpoint",
                "requests/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "server CPU us/request",
                "of bare",
                "p50 ms, 1 client",
            ],
            rows,
        )
    )
    print()
    print(
        markdown_table(
            ["batch form", "requests/s", "images/s", "p50 ms", "errors"],
            [
                [
                    "64 PNG files per request",
                    f"{batch64['rps']:,.1f}",
                    f"{batch64['rps'] * 64:,.0f}",
                    f"{batch64['p50']:.1f}",
                    str(int(batch64["errors"])),
                ],
                [
                    "256 pixel arrays per request",
                    f"{arrays['rps']:,.1f}",
                    f"{arrays['rps'] * 256:,.0f}",
                    f"{arrays['p50']:.1f}",
                    str(int(arrays["errors"])),
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
