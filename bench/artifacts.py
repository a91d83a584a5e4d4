"""What keeping artifacts in the database costs, against keeping them as files (FMNIST_ARTIFACTS=folder, the
reference: what a service on one machine or a shared folder does).

Two parts, each run side by side in interleaved rounds:

- publish and read: one epoch's record with its resume state (``queue.record_epoch``, the lease-guarded
  transaction a worker runs after every epoch) and the read of that state by the next claim, for the states
  of the d2l recipe (784-256-10, plain SGD: 0.8 MB) and of ``best-mlp`` (Adam's moments: about 22 MB), on
  SQLite and on PostgreSQL (when one answers at --postgres);
- whole jobs: the d2l recipe (10 epochs of the real data) trained by a worker in this process, on SQLite,
  created -> finished.

    .venv/bin/python -m bench.artifacts [--rounds 15] [--job-rounds 2] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from sqlalchemy import create_engine, text

from bench.common import data_dir, markdown_table
from models.data import DeviceDataset
from models.presets import resolve_spec
from models.spec import TrainingSpec
from models.training import EpochMetrics, Trainer
from service.jobs import queue
from service.jobs.queries import get_job
from service.settings import Settings
from service.store import migrations
from service.store.artifacts import ArtifactStore
from service.store.db import Database
from service.worker.resume import resume_state_bytes
from service.worker.worker import Worker

MODES = ("folder", "database")
POSTGRES = os.environ.get("FMNIST_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def database(kind: str, home: Path, admin_url: str) -> Iterator[str]:
    """A migrated, empty database of ``kind`` (its URL), dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{home / 'fmnist.db'}"
        migrations.upgrade(url)
        yield url
        return
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"fmnist_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_answers(admin_url: str) -> bool:
    with suppress(Exception):
        engine = create_engine(admin_url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    return False


def resume_states() -> dict[str, tuple[TrainingSpec, dict[str, torch.Tensor], dict[str, object]]]:
    """The training state a worker publishes for each spec (weights, optimiser state, best-so-far weights),
    after one epoch on a small random data set: its size is the spec's, whatever the data."""
    states = {}
    features, labels = torch.rand(512, 784), torch.randint(0, 10, (512,))
    dataset = DeviceDataset(features, labels, features, labels, {})
    for label, preset in (("d2l", "d2l-mlp"), ("best-mlp", "best-mlp")):
        spec = resolve_spec(preset, {})
        trainer = Trainer(spec.model_copy(update={"epochs": 1}), dataset, seed=0)
        trainer.run()  # one epoch: the optimiser's state (Adam's moments) exists after the first step
        tensors, meta = trainer.state()
        states[label] = (spec, tensors, meta)
    return states


def publish_rounds(rounds: int, kinds: list[str], admin_url: str) -> list[list[str]]:
    states = resume_states()
    results: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    sizes: dict[str, int] = {}
    for kind in kinds:
        with (
            tempfile.TemporaryDirectory(prefix="fmnist-bench-") as folder,
            database(kind, Path(folder), admin_url) as url,
        ):
            db = Database(url)
            for label, (spec, tensors, meta) in states.items():
                publishers = {mode: Publisher(db, Path(folder), mode, spec) for mode in MODES}
                sizes[label] = len(resume_state_bytes(publishers["folder"].claim, tensors, meta))
                for epoch in range(1, rounds + 1):
                    for mode in MODES if epoch % 2 else tuple(reversed(MODES)):  # interleaved, alternating order
                        publish, read = publishers[mode].timed(epoch, tensors, meta)
                        results[(kind, label, mode, "publish")].append(publish)
                        results[(kind, label, mode, "read")].append(read)
            db.dispose()
    rows = []
    for kind in kinds:
        for label in states:
            for step in ("publish", "read"):
                reference = statistics.median(results[(kind, label, "folder", step)])
                for mode in MODES:
                    values = results[(kind, label, mode, step)]
                    median = statistics.median(values)
                    state = f"{label} ({sizes[label] / 1e6:.1f} MB)"
                    ratio = f"{median / reference:.2f}x"
                    rows.append([kind, state, step, mode, f"{median:.1f}", f"{max(values):.1f}", ratio])
    return rows


class Publisher:
    """One claimed job whose epochs are recorded with their resume state in one artifact mode."""

    def __init__(self, db: Database, home: Path, mode: str, spec: TrainingSpec) -> None:
        self.db = db
        self.store = ArtifactStore(home / "checkpoints", home / "resume", in_database=mode == "database")
        queue.enqueue_job(db, spec, max_attempts=3)
        [self.claim] = queue.claim_jobs(db, f"bench-{mode}", 3600, device="cpu", limit=1)

    def timed(self, epoch: int, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> tuple[float, float]:
        """Milliseconds to publish the state with the epoch's record (the worker's part: the trainer process has
        serialised it), and to read it back as the next claim would (checked against its sha256)."""
        metrics = EpochMetrics(epoch=epoch, train_loss=1.0, train_acc=0.5, test_acc=0.5, seconds=1.0)
        state = resume_state_bytes(self.claim, tensors, meta)
        started = time.perf_counter()
        queue.record_epoch(self.db, self.claim, metrics, resume_state=state, artifacts=self.store)
        published = time.perf_counter()
        data = self.store.resume_state(self.db, self.claim.job_id, self.claim.token + 1)
        assert data == state
        return (published - started) * 1000, (time.perf_counter() - published) * 1000


def job_rounds(rounds: int) -> list[list[str]]:
    seconds: dict[str, list[float]] = defaultdict(list)
    for round_index in range(rounds):
        for mode in MODES if round_index % 2 == 0 else reversed(MODES):
            with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as folder:
                settings = Settings(home=Path(folder), data_dir=data_dir(), artifacts="folder")
                settings = settings.model_copy(update={"artifacts": mode})
                migrations.upgrade(settings.sqlalchemy_url)
                db = Database(settings.sqlalchemy_url)
                worker = Worker(settings, db, torch.device("cpu"), burst=True)
                try:
                    worker.trainer.ensure_running()  # the data set loaded: the job's time is its training
                    job = queue.enqueue_job(db, TrainingSpec(), max_attempts=1)
                    assert worker.run_once()
                    done = get_job(db, job.id)
                    assert done.status.value == "succeeded", done.error
                    assert done.started_at is not None and done.finished_at is not None
                    seconds[mode].append((done.finished_at - done.started_at).total_seconds())
                finally:
                    worker.close()
                    db.dispose()
    reference = statistics.median(seconds["folder"])
    return [
        [mode, str(len(values)), f"{statistics.median(values):.2f}", f"{statistics.median(values) / reference:.3f}x"]
        for mode, values in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="epochs published per state, database and mode")
    parser.add_argument("--job-rounds", type=int, default=2, help="d2l jobs per mode (0: skip)")
    parser.add_argument("--postgres", default=POSTGRES, help="an admin URL of a PostgreSQL server")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds = ["sqlite"] + (["postgresql"] if postgres_answers(args.postgres) else [])
    print("## publish and read one resume state (ms; ratio: against the folder on the same database)\n")
    headers = ["database", "state", "step", "artifacts", "median ms", "max ms", "of folder"]
    print(markdown_table(headers, publish_rounds(args.rounds, kinds, args.postgres)))
    if args.job_rounds:
        print("\n## the d2l recipe (10 epochs, real data), started -> finished, SQLite\n")
        print(markdown_table(["artifacts", "jobs", "median s", "of folder"], job_rounds(args.job_rounds)))


if __name__ == "__main__":
    main()
