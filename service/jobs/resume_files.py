"""Where a job's resume states live: the names the worker writes (service/worker/resume.py) and retention
removes (service/jobs/retention.py), in one place.

A state is ``<job>.<token>.safetensors`` in the resume folder, ``<token>`` being the fencing token of the claim
that wrote it (12 digits); ``<job>.safetensors`` is the unfenced name of earlier releases, read as token 0.
"""

from __future__ import annotations

import re
from pathlib import Path

TOKEN_DIGITS = 12
_TOKEN_AND_SUFFIX = rf"(\.(?P<token>\d{{{TOKEN_DIGITS}}}))?\.safetensors"
_RESUME_FILE = re.compile(rf"(?P<job>[0-9a-f]{{32}}){_TOKEN_AND_SUFFIX}")  # job ids: service.jobs.queue.new_id


def resume_path(folder: Path, job_id: str) -> Path:
    """The job's resume path: its states live beside it as ``<job>.<token>.safetensors`` (the path itself is
    where states were written before fencing; it is still read, as token 0)."""
    return folder / f"{job_id}.safetensors"


def fenced_path(path: Path, token: int) -> Path:
    """The file of the attempt holding fencing token ``token``, for the job whose resume path is ``path``."""
    return path.with_name(f"{path.stem}.{token:0{TOKEN_DIGITS}d}.safetensors")


def parse_resume_name(name: str) -> tuple[str, int] | None:
    """(job id, token) of a resume file's name (token 0 for the unfenced name); None for any other name,
    including one whose job part is not a job id (32 hex digits)."""
    match = _RESUME_FILE.fullmatch(name)
    if match is None:
        return None
    return match.group("job"), int(match.group("token") or 0)


def resume_files(path: Path) -> list[tuple[int, Path]]:
    """The job's resume files as (token, path), highest token first; the unfenced path counts as token 0."""
    pattern = re.compile(re.escape(path.stem) + _TOKEN_AND_SUFFIX)
    found = [
        (int(match.group("token") or 0), child)
        for child in path.parent.glob(f"{path.stem}*.safetensors")
        if (match := pattern.fullmatch(child.name))
    ]
    return sorted(found, key=lambda entry: entry[0], reverse=True)
