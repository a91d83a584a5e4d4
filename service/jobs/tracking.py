"""Run tracking: the labels an owner puts on a job (tags and a note), and jobs compared side by side.

Labels are not job state: the queue (``service.jobs.queue``) owns the status and never writes them, and
setting them changes neither the status nor ``updated_at``. Any job may be labelled, whatever its status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import null, select

from models.spec import SpecFields, TrainingSpec
from service.errors import JobNotFound, TooManyTags
from service.store.db import Database, valid_key
from service.store.tables import EpochMetric, Job

MAX_TAGS = 32


class _Keep:
    """The value of a label the update leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()


def merged_tags(current: Mapping[str, str] | None, changes: Mapping[str, str | None] | None) -> dict[str, str]:
    """JSON Merge Patch (RFC 7396) on a flat object: a key with a value sets it, with None removes it, and
    keys not named stay; ``changes`` None removes every tag."""
    if changes is None:
        return {}
    tags = dict(current or {})
    for key, value in changes.items():
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value
    return tags


def label_job(
    db: Database,
    job_id: str,
    *,
    tags: Mapping[str, str | None] | _Keep | None = KEEP,
    note: str | _Keep | None = KEEP,
) -> Job:
    """Merges ``tags`` into the job's (``merged_tags``) and replaces its note (None clears it); ``KEEP`` leaves
    either as it is. One write transaction, the row locked on PostgreSQL, so that two updates at once both
    count. TooManyTags when the job would end up with more than ``MAX_TAGS``."""
    with db.write() as session:
        job = session.get(Job, job_id, with_for_update=True) if valid_key(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        if not isinstance(tags, _Keep):
            merged = merged_tags(job.tags, tags)
            if len(merged) > MAX_TAGS:
                raise TooManyTags(MAX_TAGS, len(merged))
            # Sorted, so the stored object reads the same whatever order the tags came in; SQL NULL when none.
            job.tags = dict(sorted(merged.items())) if merged else null()  # type: ignore[assignment]
        if not isinstance(note, _Keep):
            job.note = note
        session.flush()
        session.refresh(job)
        return job


# -- comparing runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparedRun:
    job: Job
    params: dict[str, Any]  # the differing fields' values
    final: EpochMetric | None  # the latest epoch
    best_test: EpochMetric | None  # the highest test accuracy (the earliest of equals)
    best_val: EpochMetric | None  # the highest validation accuracy; None without a validation split


@dataclass(frozen=True)
class Comparison:
    fields: list[str]  # the spec fields whose values differ, in the spec's order
    runs: list[ComparedRun]  # in the order asked, each job once


def compare_jobs(db: Database, job_ids: Sequence[str]) -> Comparison:
    """The jobs side by side: what differs in their specs (``seed`` is the run's seed), and each one's final and
    best epochs. JobNotFound naming every id that is not a job."""
    ids = list(dict.fromkeys(job_ids))
    with db.read() as session:
        wanted = [job_id for job_id in ids if valid_key(job_id)]
        found = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(wanted)))}
        missing = [job_id for job_id in ids if job_id not in found]
        if missing:
            raise JobNotFound(*missing)
        epochs: dict[str, list[EpochMetric]] = {job_id: [] for job_id in ids}
        rows = session.scalars(
            select(EpochMetric).where(EpochMetric.job_id.in_(ids)).order_by(EpochMetric.job_id, EpochMetric.epoch)
        )
        for row in rows:
            epochs[row.job_id].append(row)
    jobs = [found[job_id] for job_id in ids]
    specs = [{**TrainingSpec.model_validate(job.spec).model_dump(mode="json"), "seed": job.seed} for job in jobs]
    fields = [
        name for name in SpecFields.model_fields if len({json.dumps(spec[name], sort_keys=True) for spec in specs}) > 1
    ]
    runs = [
        ComparedRun(
            job=job,
            params={name: spec[name] for name in fields},
            final=epochs[job.id][-1] if epochs[job.id] else None,
            best_test=_best(epochs[job.id], "test_acc"),
            best_val=_best(epochs[job.id], "val_acc"),
        )
        for job, spec in zip(jobs, specs, strict=True)
    ]
    return Comparison(fields, runs)


def _best(rows: list[EpochMetric], metric: str) -> EpochMetric | None:
    """The epoch with the highest ``metric``, the earliest of equals; None when no epoch has it."""
    scored = [row for row in rows if getattr(row, metric) is not None]
    return max(scored, key=lambda row: (getattr(row, metric), -row.epoch)) if scored else None
