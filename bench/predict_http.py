"""/v1/predict under load: wrk (a C load generator) at concurrency 32 against the service and, in the
same run, against two references serving the same upload:

- a bare FastAPI app (bench/bare_app.py, ``async def``, same uvicorn settings) that reads the upload and
  returns a constant: the HTTP stack's own limit;
- LitServe (bench/litserve_app.py) serving the same checkpoint with the same preprocessing, set up as its
  documentation recommends for a CPU: the peer a user would pick. It is installed into bench/.litserve
  (git-ignored), apart from the project's dependencies, on first use.

Then images/s for the batch forms (64 files per request; 256 pixel arrays per request), and with
``--overload`` the service at 256 connections: answers by status, timeouts, p99 and whether /healthz kept
answering within 100 ms.

Needs wrk (Debian: apt-get install wrk), FMNIST_DATA_DIR, and pip access on the first run (LitServe).

    .venv/bin/python -m bench.predict_http [--duration 10] [--rounds 3] [--connections 32] [--max-wait-ms 0,1,2]
                                           [--loop-max 0,32] [--workers 1,2] [--overload]

The runs against each server are interleaved round by round, so that a slow spell on a shared machine
hits every endpoint; the table shows medians and the ratios' ranges. Server CPU is that of the whole
process tree (LitServe and ``serve --workers N`` work in child processes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from bench.common import FMNIST, ROOT, data_dir, free_port, markdown_table
from models.data import load_fashion_mnist
from models.spec import TrainingSpec
from service.jobs import queue
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker

BOUNDARY = "fmnistbenchboundary"
LITSERVE = "litserve==0.2.19"
LITSERVE_TARGET = ROOT / "bench" / ".litserve"
OVERLOAD_CONNECTIONS = 256
HEALTHZ_LIMIT_S = 0.1

# wrk counts non-2xx answers only in total: these hooks count them per status, in each thread's own Lua
# state, and done() (run once, on the main thread) adds up the threads' tables.
STATUS_COUNTING_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + count end
  end
  io.write("STATUSES")
  for status, count in pairs(total) do io.write(" " .. status .. "=" .. count) end
  io.write("\\n")
end
"""


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


def run_wrk(url: str, script: Path, connections: int, duration: int, timeout_s: int = 2) -> dict[str, float]:
    output = subprocess.run(
        [
            *["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_s}s"],
            *["--latency", "-s", str(script), url],
        ],
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
    result = {"rps": requests, "p50": latency("50"), "p99": latency("99"), "errors": failed}
    result["timeouts"] = float(socket.group(4)) if socket else 0.0
    result["socket_errors"] = float(sum(map(int, socket.groups()[:3]))) if socket else 0.0
    statuses = re.search(r"^STATUSES(.*)$", output, re.M)
    if statuses:
        for pair in statuses.group(1).split():
            status, count = pair.split("=")
            result[f"status_{status}"] = float(count)
    return result


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


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time so far of a process and of every process below it (Linux /proc): LitServe and
    ``serve --workers N`` do their work in child processes. 0 where unavailable."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = set(), [root]
    while frontier:
        pid = frontier.pop()
        tree.add(pid)
        frontier += [child for child, parent in parents.items() if parent == pid and child not in tree]
    return sum(cpu.get(pid, 0.0) for pid in tree)


def measure(url: str, pid: int, script: Path, connections: int, duration: int) -> dict[str, float]:
    """One wrk run, with the server's CPU time per request beside it."""
    before = tree_cpu_seconds(pid)
    result = run_wrk(url, script, connections, duration)
    result["cpu_us"] = (tree_cpu_seconds(pid) - before) / max(1.0, result["rps"] * duration) * 1e6
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


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    ready_path: str
    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self) -> None:
        """Stops it and everything it started: each server runs in its own process group."""
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # what it left behind, if anything


def start_server(name: str, command: list[str], env: dict[str, str], ready_path: str, **kwargs: object) -> Server:
    port = free_port()
    process = subprocess.Popen([*command, "--port", str(port)], env=env, cwd=ROOT, start_new_session=True)
    return Server(name, f"http://127.0.0.1:{port}", process, ready_path, **kwargs)  # type: ignore[arg-type]


def ensure_litserve() -> str:
    """Installs LitServe into bench/.litserve, apart from the project's dependencies, unless it is there;
    returns its version."""
    if not (LITSERVE_TARGET / "litserve").is_dir():
        print(f"installing {LITSERVE} into {LITSERVE_TARGET} (once)", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(LITSERVE_TARGET), LITSERVE], check=True
        )
    (distribution,) = importlib.metadata.distributions(name="litserve", path=[str(LITSERVE_TARGET)])
    return distribution.version


class HealthPoller(threading.Thread):
    """Asks /healthz every 100 ms, on a new connection each time as a load balancer's probe does, and keeps
    how long each answer took (infinity for no answer or not a 200)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.seconds, self.stopping = url + "/healthz", list[float](), threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            start = time.perf_counter()
            try:
                ok = httpx.get(self.url, timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.seconds.append(time.perf_counter() - start if ok else math.inf)
            self.stopping.wait(0.1)

    def stop(self) -> list[float]:
        self.stopping.set()
        self.join()
        return self.seconds


def overload(server: Server, script: Path, duration: int) -> dict[str, float]:
    """The server at 256 connections, with /healthz polled beside the load."""
    poller = HealthPoller(server.url)
    poller.start()
    result = run_wrk(server.url + "/v1/predict", script, OVERLOAD_CONNECTIONS, duration, timeout_s=5)
    probes = poller.stop()
    result["healthz_polls"] = len(probes)
    result["healthz_within"] = sum(seconds <= HEALTHZ_LIMIT_S for seconds in probes)
    result["healthz_max_ms"] = max(probes, default=math.nan) * 1000
    return result


def ratio_cell(results: list[dict[str, float]], references: list[dict[str, float]]) -> str:
    ratios = [r["rps"] / b["rps"] for r, b in zip(results, references, strict=True)]
    return f"{median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server, interleaved; medians reported")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--max-wait-ms",
        default="",
        help="comma-separated FMNIST_PREDICT_MAX_WAIT_MS values to compare (default: the service's default)",
    )
    parser.add_argument("--workers", default="1", help="comma-separated `fmnist serve --workers N` values to compare")
    parser.add_argument(
        "--loop-max",
        default="",
        help="comma-separated FMNIST_PREDICT_LOOP_MAX values to compare (default: the service's default)",
    )
    parser.add_argument(
        "--overload", action="store_true", help=f"also each service at {OVERLOAD_CONNECTIONS} connections"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    litserve_version = ensure_litserve()
    waits = [w.strip() for w in args.max_wait_ms.split(",") if w.strip()] or [None]
    loop_maxes = [n.strip() for n in args.loop_max.split(",") if n.strip()] or [None]
    worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="fmnist-predict-") as scratch:
        home = Path(scratch)
        settings, single, files64, pixels = prepare(home)
        (checkpoint,) = settings.checkpoint_dir.glob("*.safetensors")
        env = {**os.environ, "FMNIST_HOME": str(settings.home), "FMNIST_DATA_DIR": str(data_dir())}
        uvicorn_flags = ["--log-level", "warning"]
        servers: list[Server] = []
        try:
            servers.append(
                start_server(
                    "bare FastAPI (constant)",
                    [sys.executable, "-m", "uvicorn", "bench.bare_app:app", *uvicorn_flags],
                    env,
                    "/docs",
                )
            )
            servers.append(
                start_server(
                    f"LitServe {litserve_version}",
                    [sys.executable, "-m", "bench.litserve_app", "--checkpoint", str(checkpoint)],
                    {
                        **env,
                        # LitServe's fastapi and uvicorn first, in this process only; torch from this environment.
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(LITSERVE_TARGET), env.get("PYTHONPATH")])),
                        "OMP_NUM_THREADS": "1",  # as the service's forward passes (FMNIST_PREDICT_THREADS=1)
                    },
                    "/health",
                    stop_signal=signal.SIGINT,  # LitServe stops its worker processes on Ctrl-C, not on SIGTERM
                )
            )
            for workers in worker_counts:
                for wait, loop_max in itertools.product(waits, loop_maxes):
                    name = "service /v1/predict"
                    name += f", {workers} worker{'s' if workers > 1 else ''}" if worker_counts != [1] else ""
                    name += f", max wait {wait} ms" if wait is not None else ""
                    name += f", loop max {loop_max}" if loop_max is not None else ""
                    extra = {"FMNIST_PREDICT_MAX_WAIT_MS": wait} if wait is not None else {}
                    if loop_max is not None:
                        extra["FMNIST_PREDICT_LOOP_MAX"] = loop_max
                    command = [*FMNIST, "serve", "--workers", str(workers), *uvicorn_flags]
                    servers.append(start_server(name, command, {**env, **extra}, "/readyz"))
            for server in servers:
                wait_ready(server.url, server.ready_path)
                run_wrk(server.url + "/v1/predict", single, args.connections, 2)  # warm-up
            runs: dict[str, list[dict[str, float]]] = {server.name: [] for server in servers}
            for _ in range(args.rounds):  # interleaved: a slow spell on a shared machine hits every endpoint
                for server in servers:
                    runs[server.name].append(
                        measure(server.url + "/v1/predict", server.process.pid, single, args.connections, args.duration)
                    )
            lone = {server.name: run_wrk(server.url + "/v1/predict", single, 1, args.duration) for server in servers}
            services = servers[2:]
            batch64 = run_wrk(services[0].url + "/v1/predict", files64, 8, args.duration)
            arrays = run_wrk(services[0].url + "/v1/predict/pixels", pixels, 8, args.duration)
            if args.overload:
                counting = home / "overload.lua"
                counting.write_text(single.read_text() + STATUS_COUNTING_LUA)
                overloads = {server.name: overload(server, counting, args.duration) for server in services}
        finally:
            for server in servers:
                server.stop()
    bare_runs, litserve_runs = runs[servers[0].name], runs[servers[1].name]
    rows = []
    for name, results in runs.items():
        rows.append(
            [
                name,
                f"{median([r['rps'] for r in results]):,.0f}",
                f"{median([r['p50'] for r in results]):.1f}",
                f"{median([r['p99'] for r in results]):.1f}",
                str(int(sum(r["errors"] for r in results))),
                f"{median([r['cpu_us'] for r in results]):,.0f}",
                ratio_cell(results, bare_runs),
                ratio_cell(results, litserve_runs),
                f"{lone[name]['p50']:.2f}",
            ]
        )
    print(
        f"wrk -t2 -c{args.connections} -d{args.duration}s x {args.rounds} interleaved rounds, one 28x28 PNG per "
        "request; medians (ratios: median of the per-round ratios, and their range). Server CPU: the whole "
        "process tree. Last column: one client, one request at a time"
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
                "of LitServe",
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
    if args.overload:
        print()
        print(
            f"Overload: wrk -t2 -c{OVERLOAD_CONNECTIONS} -d{args.duration}s --timeout 5s, answers counted by status; "
            f"/healthz polled every 100 ms on a new connection (within: a 200 in {HEALTHZ_LIMIT_S * 1000:.0f} ms)"
        )
        print(markdown_table(OVERLOAD_HEADERS, [overload_row(name, result) for name, result in overloads.items()]))


OVERLOAD_HEADERS = [
    "endpoint",
    "answers/s",
    "200",
    "503",
    "429",
    "other",
    "timeouts",
    "socket errors",
    "p99 ms, all answers",
    "/healthz within 100 ms",
    "/healthz max ms",
]


def overload_row(name: str, result: dict[str, float]) -> list[str]:
    by_status = {key.removeprefix("status_"): int(value) for key, value in result.items() if key.startswith("status_")}
    other = sum(count for status, count in by_status.items() if status not in ("200", "503", "429"))
    return [
        name,
        f"{result['rps']:,.0f}",
        *(f"{by_status.get(status, 0):,}" for status in ("200", "503", "429")),
        f"{other:,}",
        f"{int(result['timeouts']):,}",
        f"{int(result['socket_errors']):,}",
        f"{result['p99']:.1f}",
        f"{int(result['healthz_within'])}/{int(result['healthz_polls'])}",
        "no answer in 2 s" if math.isinf(result["healthz_max_ms"]) else f"{result['healthz_max_ms']:.0f}",
    ]


if __name__ == "__main__":
    main()
