"""Sweeps: expanding a grid into specs, and reading a sweep back ranked best first."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from sqlalchemy import func, select

from models.spec import SpecFields, TrainingSpec
from service.errors import InvalidSpec, SweepNotFound
from service.jobs.specs import validated_spec
from service.store.db import Database, valid_key
from service.store.tables import EpochMetric, Job, Model, Sweep


def expand_grid(
    preset: str | None, base: dict[str, Any], grid: dict[str, list[Any]], max_size: int
) -> list[tuple[dict[str, Any], TrainingSpec]]:
    """Every combination of the grid's values on top of ``base``, validated; grid order is kept."""
    errors: list[dict[str, Any]] = []
    fields = SpecFields.model_fields
    for name, values in grid.items():
        if name not in fields:
            errors.append({"loc": ["body", "grid", name], "msg": f"{name!r} is not a spec field", "type": "grid"})
        elif not values:
            errors.append({"loc": ["body", "grid", name], "msg": "give at least one value", "type": "grid"})
    if not grid:
        errors.append({"loc": ["body", "grid"], "msg": "the grid needs at least one field", "type": "grid"})
    if errors:
        raise InvalidSpec(errors)
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > max_size:
        raise InvalidSpec(
            [{"loc": ["body", "grid"], "msg": f"the grid has {size} points; the limit is {max_size}", "type": "grid"}]
        )
    points = []
    for index, combination in enumerate(itertools.product(*grid.values())):
        params = dict(zip(grid, combination, strict=True))
        points.append((params, validated_spec(preset, {**base, **params}, loc=("body", "grid", index))))
    return points


def _params(job: Job, grid: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: job.spec.get(name) for name in grid}


def selection_rank(val_acc: float | None, test_acc: float | None) -> tuple[int, float]:
    """A sort key, best first: by validation accuracy where there is one (model selection never looks at the
    test set), else by test accuracy; runs with neither last. Sweeps rank their jobs by it, retention its models."""
    if val_acc is not None:
        return (0, -val_acc)
    if test_acc is not None:
        return (1, -test_acc)
    return (2, 0.0)


def get_sweep(db: Database, sweep_id: str) -> tuple[Sweep, list[dict[str, Any]]]:
    """The sweep and its jobs' rows (job, params, val_acc, test_acc), best first."""
    with db.read() as session:
        sweep = session.get(Sweep, sweep_id) if valid_key(sweep_id) else None
        if sweep is None:
            raise SweepNotFound(sweep_id)
        jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.created_at)).all()
        ids = [job.id for job in jobs]
        models = {m.job_id: m for m in session.scalars(select(Model).where(Model.job_id.in_(ids)))}
        latest: dict[str, EpochMetric] = {}
        for row in session.scalars(select(EpochMetric).where(EpochMetric.job_id.in_(ids))):
            if row.job_id not in latest or row.epoch > latest[row.job_id].epoch:
                latest[row.job_id] = row
    rows: list[dict[str, Any]] = []
    for job in jobs:
        source: Model | EpochMetric | None = models.get(job.id) or latest.get(job.id)
        val_acc = source.val_acc if source else None
        test_acc = source.test_acc if source else None
        rows.append({"job": job, "params": _params(job, sweep.grid), "val_acc": val_acc, "test_acc": test_acc})
    rows.sort(key=lambda row: selection_rank(row["val_acc"], row["test_acc"]))
    return sweep, rows


def list_sweeps(db: Database, limit: int, offset: int, owner: str | None = None) -> tuple[list[Sweep], int]:
    """A page of sweeps, newest first, and how many there are; only ``owner``'s when given."""
    mine = [Sweep.owner == owner] if owner is not None else []
    with db.read() as session:
        sweeps = session.scalars(
            select(Sweep).where(*mine).order_by(Sweep.created_at.desc()).limit(limit).offset(offset)
        ).all()
        total = session.scalar(select(func.count()).select_from(Sweep).where(*mine)) or 0
    return list(sweeps), total


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(row["job"].status.value for row in rows))
