"""The states of a job and of a study. Plain enums: the client and the schemas read it without loading the ORM."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life. Only ``service.jobs.queue`` moves a job between these."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    # A study's trial its pruner stopped early (its learning curve was behind the others'); its metrics stay.
    pruned = "pruned"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.pruned)


class StudyStatus(StrEnum):
    """Where a study is: asking for trials, or ended (every trial run, or cancelled)."""

    running = "running"
    completed = "completed"
    cancelled = "cancelled"
