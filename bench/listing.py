"""Job listing latency on SQLite at 50,000 and 500,000 jobs: the first page, a deep page by `offset`, and the
same deep page by `cursor`, sorted newest first and by test accuracy; and what `count` and a spec filter add.

The jobs are written straight into a fresh database (core executemany inserts, in batches), like a busy
service's table: 10% without accuracies (queued or running), accuracies on a coarse grid so that many jobs
share one (the keyset pages must step through ties), a few specs and tags. Each query runs through
`service.jobs.listing.list_jobs`, as the API route calls it (50 jobs a page, ORM rows included, no HTTP), and
the table shows the median of `--repeat` runs, in milliseconds.

    .venv/bin/python -m bench.listing [--sizes 50000 500000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from bench.common import markdown_table
from models.spec import TrainingSpec
from service.jobs.listing import JobFilters, JobOrder, Position, list_jobs
from service.jobs.status import JobStatus
from service.store import migrations
from service.store.db import Database
from service.store.tables import Job

PAGE = 50
BATCH = 10_000
SORTS = ("-created_at", "-test_acc")
SPECS = [
    TrainingSpec(hidden_layers=widths, optimizer=optimizer, lr=lr, epochs=10).model_dump(mode="json")
    for widths in ([256], [1024, 512], [])
    for optimizer, lr in (("sgd", 0.1), ("adam", 0.001))
]


def job_rows(start: int, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Jobs ``start`` .. ``start + count - 1``, one second apart (every 100th shares its neighbour's time)."""
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for number in range(start, start + count):
        finished = rng.random() >= 0.1
        created = epoch + timedelta(seconds=number - (number % 100 == 1))
        rows.append(
            {
                "id": f"{rng.getrandbits(128):032x}",
                "status": JobStatus.succeeded if finished else JobStatus.queued,
                "spec": SPECS[number % len(SPECS)],
                "seed": number,
                "epochs_done": 10 if finished else 0,
                "attempt": 1 if finished else 0,
                "max_attempts": 3,
                "lease_token": 1 if finished else 0,
                "cancel_requested": False,
                "created_at": created,
                "updated_at": created,
                "tags": {"team": rng.choice(["vision", "speech"])} if number % 7 == 0 else None,
                # Two decimals: about 1,500 jobs of 500,000 share each value.
                "test_acc": round(rng.uniform(0.6, 0.93), 2) if finished else None,
                "val_acc": round(rng.uniform(0.6, 0.93), 2) if finished else None,
                "train_seconds": round(rng.uniform(5, 120), 1) if finished else None,
            }
        )
    return rows


def fill(db: Database, start: int, stop: int, rng: random.Random) -> float:
    """Inserts jobs ``start`` .. ``stop - 1``; the seconds it took."""
    began = time.perf_counter()
    for first in range(start, stop, BATCH):
        with db.write() as session:
            session.execute(insert(Job), job_rows(first, min(BATCH, stop - first), rng))
    return time.perf_counter() - began


def median_ms(call: Callable[[], object], repeat: int) -> float:
    call()  # warm: the pages the query reads come into the cache
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def deep_cursor(db: Database, order: JobOrder, offset: int) -> str:
    """The cursor that continues after the first ``offset`` jobs, as the page before would hand it out."""
    page = list_jobs(db, JobFilters(), order, limit=1, offset=offset - 1, count=False)
    return Position.of(page.jobs[0], order).encode(order, JobFilters().digest())


def measure(db: Database, size: int, repeat: int) -> dict[tuple[str, str], float]:
    """Milliseconds per query, keyed by (query, sort); N/2 is half the jobs in."""
    results: dict[tuple[str, str], float] = {}
    deep = size // 2
    everything, adam = JobFilters(), JobFilters(spec={"optimizer": "adam"})
    for sort in SORTS:
        order = JobOrder.parse(sort)
        cursor = deep_cursor(db, order, deep)
        by_offset = list_jobs(db, everything, order, limit=PAGE, offset=deep, count=False)
        by_cursor = list_jobs(db, everything, order, limit=PAGE, cursor=cursor, count=False)
        assert [job.id for job in by_offset.jobs] == [job.id for job in by_cursor.jobs], "the same page both ways"
        queries: list[tuple[str, JobFilters, dict[str, Any]]] = [
            ("first page", everything, {}),
            ("offset N/2", everything, {"offset": deep}),
            ("cursor at N/2", everything, {"cursor": cursor}),
            ("first page + count", everything, {"count": True}),
            ("first page, optimizer=adam", adam, {}),
            ("first page + count, optimizer=adam", adam, {"count": True}),
        ]
        for name, filters, options in queries:
            call = functools.partial(list_jobs, db, filters, order, limit=PAGE, **{"count": False, **options})
            results[(name, sort)] = median_ms(call, repeat)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(0)
    results: dict[int, dict[tuple[str, str], float]] = {}
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-listing-") as folder:
        url = f"sqlite:///{Path(folder) / 'fmnist.db'}"
        migrations.upgrade(url)
        db = Database(url)
        stored = 0
        for size in sorted(args.sizes):
            seconds = fill(db, stored, size, rng)
            print(f"inserted jobs {stored:,} .. {size:,} in {seconds:.1f} s", flush=True)
            stored = size
            with db.read() as session:
                assert session.scalar(select(func.count()).select_from(Job)) == size
            results[size] = measure(db, size, args.repeat)
        db.dispose()
    queries = list(dict.fromkeys(name for found in results.values() for name, _sort in found))
    headers = ["query (50 jobs a page)"] + [f"{size:,} jobs, `{sort}`" for size in results for sort in SORTS]
    rows = [[name] + [f"{results[size][(name, sort)]:.2f}" for size in results for sort in SORTS] for name in queries]
    print(f"\nSQLite, median of {args.repeat} runs, milliseconds; N/2: half the jobs in")
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
