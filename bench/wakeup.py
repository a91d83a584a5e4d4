"""How fast an idle worker starts a newly queued job: created_at -> started_at, over many submissions.

Submissions through the API wake the worker (signal file); as the reference, the same jobs are put in
the database directly, without the signal, so the worker only finds them at its next poll
(FMNIST_POLL_SECONDS). Each job is tiny and the next one is submitted once the last has ended, so the
worker is idle every time.

    .venv/bin/python -m bench.wakeup [--n 100]
"""

from __future__ import annotations

import argparse
import statistics
from datetime import datetime

from bench.common import client_for, markdown_table, service, wait_for
from models.spec import TrainingSpec
from service.jobs import queue
from service.store.db import Database

TINY = {"hidden_layers": [], "batch_size": 60000, "epochs": 1}


def latency_ms(job: dict[str, object]) -> float:
    created = datetime.fromisoformat(str(job["created_at"]))
    started = datetime.fromisoformat(str(job["started_at"]))
    return (started - created).total_seconds() * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--reference-n", type=int, default=20)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"API submit (wake-up signal)": [], "database insert only (poll)": []}
    with service("cpu") as running, client_for(running) as client:
        for _ in range(args.n):
            job_id = client.post("/v1/jobs", json=TINY).json()["id"]
            results["API submit (wake-up signal)"].append(latency_ms(wait_for(running, client, job_id, poll=0.01)))
        db = Database(running.env.get("FMNIST_DATABASE_URL") or f"sqlite:///{running.home / 'fmnist.db'}")
        for _ in range(args.reference_n):
            job = queue.enqueue_job(db, TrainingSpec(**TINY), max_attempts=3)  # type: ignore[arg-type]
            results["database insert only (poll)"].append(latency_ms(wait_for(running, client, job.id, poll=0.01)))
        db.dispose()
    rows = [
        [
            name,
            str(len(values)),
            f"{statistics.median(values):.1f}",
            f"{percentile(values, 0.99):.1f}",
            f"{max(values):.1f}",
        ]
        for name, values in results.items()
    ]
    print("idle worker: queued -> running, milliseconds")
    print(markdown_table(["path", "n", "p50 ms", "p99 ms", "max ms"], rows))


if __name__ == "__main__":
    main()
