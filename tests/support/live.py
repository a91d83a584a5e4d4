"""One real API process and one real worker for a whole test module, with API keys configured."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.api import auth
from service.store import migrations
from service.store.db import Database
from tests.test_e2e import Stack

ADMIN_KEY = "test-admin-key"

# Tiny and quick on the synthetic data: a job takes a fraction of a second.
TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 3, "seed": 1}


@dataclass(frozen=True)
class Live:
    url: str
    admin_key: str  # every scope (FMNIST_API_KEYS)
    predict_key: str  # the `predict` scope only
    stack: Stack


@contextmanager
def live_stack(folder: Path, data_dir: Path, **env: str) -> Iterator[Live]:
    """`fmnist serve` and `fmnist worker --device cpu` on a fresh SQLite database; stopped (and checked for
    tracebacks) on exit. ``env`` adds FMNIST_ settings for both."""
    stack = Stack(folder / "home", data_dir, folder)
    stack.env.update(
        {
            "FMNIST_API_KEYS": ADMIN_KEY,
            "FMNIST_POLL_SECONDS": "0.05",
            "FMNIST_LEASE_SECONDS": "2",  # renewed, and a cancel request noticed, every 2/3 s
            "FMNIST_EVENTS_POLL_SECONDS": "0.05",
            **env,
        }
    )
    url = f"sqlite:///{folder / 'home' / 'fmnist.db'}"
    migrations.upgrade(url)
    db = Database(url)
    try:
        _row, predict_key = auth.create_key(db, "predict only", ["predict"])
    finally:
        db.dispose()
    try:
        stack.start("api", "serve", "--port", str(stack.port))
        stack.start("worker", "worker", "--device", "cpu")
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            stack.wait_ready(client)
        yield Live(stack.url, ADMIN_KEY, predict_key, stack)
        assert stack.stop("worker") == 0, stack.log("worker")
        assert stack.stop("api") == 0, stack.log("api")
        # The worker logs the traceback of a job that fails, which some tests cause on purpose; the API none.
        assert "Traceback" not in stack.log("api"), stack.log("api")
    finally:
        stack.close()
