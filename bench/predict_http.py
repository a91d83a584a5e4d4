"""/v1/predict under load: wrk (a C load generator) at concurrency 32 against the service and, in the
same run, against a bare FastAPI app (bench/bare_app.py, same uvicorn settings) that takes the same
upload and returns a constant. Then images/s for the batch forms (64 files per request; 256 pixel
arrays per request).

Needs wrk (Debian: apt-get install wrk) and FMNIST_DATA_DIR.

    .venv/bin/python -m bench.predict_http [--duration 10] [--connections 32]
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
from service import migrations, queue
from service.db import Database
from service.settings import Settings
from service.worker import Worker

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
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="fmnist-predict-") as scratch:
        home = Path(scratch)
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
        single = lua_script(home, "single", multipart([("file", pngs[0])]), f"multipart/form-data; boundary={BOUNDARY}")
        files64 = lua_script(
            home, "files64", multipart([("files", png) for png in pngs]), f"multipart/form-data; boundary={BOUNDARY}"
        )
        pixels = lua_script(
            home, "pixels", json.dumps({"images": np.asarray(test).tolist()}).encode(), "application/json"
        )

        env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(data_dir())}
        service_port, bare_port = free_port(), free_port()
        uvicorn_flags = ["--log-level", "warning"]
        processes = [
            subprocess.Popen([*FMNIST, "serve", "--port", str(service_port), *uvicorn_flags], env=env),
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(bare_port), *uvicorn_flags],
                env=env,
            ),
        ]
        try:
            service_url, bare_url = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{bare_port}"
            wait_ready(service_url, "/readyz")
            wait_ready(bare_url, "/docs")
            results = {}
            for name, url in (("bare FastAPI (constant)", bare_url), ("service /v1/predict", service_url)):
                run_wrk(url + "/v1/predict", single, args.connections, 2)  # warm-up
                results[name] = run_wrk(url + "/v1/predict", single, args.connections, args.duration)
            batch64 = run_wrk(service_url + "/v1/predict", files64, 8, args.duration)
            arrays = run_wrk(service_url + "/v1/predict/pixels", pixels, 8, args.duration)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
    bare_rps = results["bare FastAPI (constant)"]["rps"]
    rows = [
        [
            name,
            f"{r['rps']:,.0f}",
            f"{r['p50']:.1f}",
            f"{r['p99']:.1f}",
            str(int(r["errors"])),
            f"{r['rps'] / bare_rps:.0%}",
        ]
        for name, r in results.items()
    ]
    print(f"wrk -t2 -c{args.connections} -d{args.duration}s, one 28x28 PNG per request")
    print(markdown_table(["endpoint", "requests/s", "p50 ms", "p99 ms", "errors", "of bare"], rows))
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
