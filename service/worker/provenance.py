"""What a job ran with: recorded so a result can be traced and reproduced."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from typing import Any

import torch

from service.store.migrations import PROJECT_ROOT


@functools.cache
def code_version() -> str:
    """The git commit of the checkout when there is one (``+dirty`` with local changes), else the version."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{commit}+dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        try:
            return f"fmnist-service {metadata.version('fmnist-service')}"
        except metadata.PackageNotFoundError:
            return "unknown"


def provenance(device: str, data_sha256: dict[str, str], cuda_graphs: bool) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "device": device,
        "cuda_graphs": cuda_graphs,
        "data_sha256": data_sha256,
        "code_version": code_version(),
    }
