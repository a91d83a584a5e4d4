"""End to end: real `fmnist serve` and `fmnist worker` processes, real HTTP, real data when available."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from models.data import load_fashion_mnist
from service.store import migrations
from tests.conftest import real_data_dir
from tests.support.servers import free_port, wait_ready

pytestmark = pytest.mark.e2e

# The installed console script; `python -m service.cli` where the project is on the path but not installed.
_SCRIPT = Path(sys.executable).with_name("fmnist")
FMNIST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "service.cli"]


class Stack:
    """A migrated FMNIST_HOME with an API process and a worker process on it."""

    def __init__(self, home: Path, data_dir: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FMNIST_HOME": str(home), "FMNIST_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        self.env.pop("FMNIST_DATABASE_URL", None)
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FMNIST, *args], env=self.env, capture_output=True, text=True, timeout=120)

    def start(self, name: str, *args: str) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [*FMNIST, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, client: httpx.Client, timeout: float = 60) -> None:
        try:
            wait_ready(client, self.processes["api"], timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log('api')}") from exc

    def stop(self, name: str, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def stack(tmp_path: Path, synthetic_data_dir: Path) -> Iterator[Stack]:
    data_dir = real_data_dir() or synthetic_data_dir
    instance = Stack(tmp_path / "home", data_dir, tmp_path)
    yield instance
    instance.close()


def wait_for_job(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.timeout(300)
def test_train_over_http_then_predict_a_test_image(stack: Stack, tmp_path: Path) -> None:
    upgrade = stack.run("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    stack.start("api", "serve", "--port", str(stack.port))
    stack.start("worker", "worker", "--device", "cpu")
    real = real_data_dir() is not None
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        stack.wait_ready(client)
        # The d2l recipe, unchanged but for a fixed seed; 10 epochs take ~10 s on two CPU cores.
        spec = {"seed": 0} if real else {"hidden_layers": [32], "batch_size": 32, "epochs": 5, "seed": 0}
        submitted = client.post("/v1/jobs", json=spec)
        assert submitted.status_code == 202
        location = submitted.headers["location"]
        job = wait_for_job(client, submitted.json()["id"], timeout=240)
        assert job["status"] == "succeeded", (job, stack.log("worker"))
        assert client.get(location).json()["model_id"] == job["model_id"]
        epochs = client.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
        assert [e["epoch"] for e in epochs] == list(range(1, job["spec"]["epochs"] + 1))
        if real:
            assert epochs[-1]["test_acc"] >= 0.84, epochs

        arrays = load_fashion_mnist(stack_data_dir(stack), tmp_path / "cache")
        images, labels = arrays.test_images[:50].numpy(), arrays.test_labels[:50].numpy()
        right = 0
        for image, label in zip(images, labels, strict=True):
            response = client.post("/v1/predict", files={"file": ("test.png", png(image), "image/png")})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model_id"] == job["model_id"]
            right += body["predictions"][0]["class_id"] == int(label)
        # The PNG round trip is lossless, so accuracy on these matches the model's test accuracy.
        assert right / len(labels) >= epochs[-1]["test_acc"] - 0.15

    assert stack.stop("worker") == 0, stack.log("worker")
    assert stack.stop("api") == 0, stack.log("api")
    assert "Traceback" not in stack.log("api") + stack.log("worker")


def stack_data_dir(stack: Stack) -> Path:
    return Path(stack.env["FMNIST_DATA_DIR"])


@pytest.mark.timeout(300)
def test_a_killed_worker_s_job_is_picked_up_by_another(stack: Stack) -> None:
    assert stack.run("db", "upgrade").returncode == 0
    stack.env["FMNIST_LEASE_SECONDS"] = "2"
    stack.start("api", "serve", "--port", str(stack.port))
    stack.start("worker", "worker", "--device", "cpu")
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        stack.wait_ready(client)
        spec = {"hidden_layers": [64], "batch_size": 128, "epochs": 25, "seed": 3}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] < 1:
            assert time.monotonic() < deadline, stack.log("worker")
            time.sleep(0.05)
        stack.processes["worker"].kill()
        stack.processes["worker"].wait()
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        stack.start("rescuer", "worker", "--device", "cpu")
        job = wait_for_job(client, job_id, timeout=240)
        epochs = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert job["status"] == "succeeded", (job, stack.log("rescuer"))
    assert job["attempt"] == 2
    assert job["provenance"]["resumed_from_epoch"] >= 1, "the second attempt resumed instead of starting over"
    assert [e["epoch"] for e in epochs] == list(range(1, 26)), "each epoch recorded exactly once"
    assert stack.stop("rescuer") == 0
    assert stack.stop("api") == 0


def test_worker_refuses_a_device_that_is_not_there(stack: Stack) -> None:
    result = stack.run("worker", "--device", "cuda:99")
    assert result.returncode == 2 and "device" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_all_without_a_gpu_says_so(stack: Stack) -> None:
    result = stack.run("worker", "--device", "all")
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_burst_worker_on_an_empty_queue_exits_zero(stack: Stack) -> None:
    assert stack.run("db", "upgrade").returncode == 0
    result = stack.run("worker", "--device", "cpu", "--burst")
    assert result.returncode == 0, result.stderr
    current = stack.run("db", "current")
    assert f"current: {migrations.head_revision()}" in current.stdout


@pytest.mark.gpu
@pytest.mark.real_data
@pytest.mark.timeout(300)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_default_recipe_on_the_gpu_through_the_api(stack: Stack) -> None:
    if real_data_dir() is None:
        pytest.skip("real Fashion-MNIST not available")
    assert stack.run("db", "upgrade").returncode == 0
    stack.start("api", "serve", "--port", str(stack.port))
    stack.start("worker", "worker", "--device", "cuda")
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        stack.wait_ready(client)
        job = wait_for_job(client, client.post("/v1/jobs", json={"seed": 0}).json()["id"], timeout=240)
        epochs = client.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
    assert job["status"] == "succeeded", (job, stack.log("worker"))
    assert job["provenance"]["cuda_graphs"] is True and job["device"].startswith("cuda")
    assert epochs[-1]["test_acc"] >= 0.84, epochs
    assert stack.stop("worker") == 0 and stack.stop("api") == 0
