"""Checkpoints that describe themselves: safetensors weights with the validated spec in the header.

Loading never unpickles anything: the spec is JSON in the safetensors metadata, it rebuilds the module,
and the weights are loaded into that module strictly.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from models.files import file_sha256
from models.network import build_mlp
from models.spec import TrainingSpec

FORMAT = "fmnist-mlp/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its recorded digest."""


@dataclass(frozen=True)
class SavedCheckpoint:
    path: Path
    sha256: str
    size_bytes: int


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, durable: bool = True
) -> SavedCheckpoint:
    """Writes a safetensors file atomically: a temp file in the same folder, then a rename.

    ``durable`` adds the fsyncs that make it survive a power cut, not just a crash of this process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {name: value.detach().to("cpu").contiguous() for name, value in tensors.items()}
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(cpu, str(tmp), metadata=metadata)
        if durable:
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        sha = file_sha256(tmp)
        size = tmp.stat().st_size
        tmp.chmod(0o644)
        tmp.replace(path)
        if durable:
            _fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SavedCheckpoint(path=path, sha256=sha, size_bytes=size)


# A temporary file this much older than now is a write that a killed process never finished (seconds): the
# workers' sweep at start and retention (fmnist gc) both use it.
STALE_TEMPORARY_SECONDS = 3600.0


def sweep_temporary_files(folder: Path, older_than: float, now: float | None = None) -> list[Path]:
    """Removes what interrupted atomic writes (``save_tensors``, ``models.export``) left in ``folder``: files
    named ``.<name>.<random>.tmp`` last modified more than ``older_than`` seconds before ``now`` (default: the
    current time). A write in progress is a fresh file, so another process's is never touched. Returns the
    paths removed; a missing folder has none."""
    if not folder.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - older_than
    removed = []
    for candidate in folder.glob(".*.tmp"):
        try:
            if candidate.is_file() and candidate.stat().st_mtime < cutoff:
                candidate.unlink()
                removed.append(candidate)
        except FileNotFoundError:  # another process swept it first
            continue
    return removed


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors (on the CPU) and metadata; CheckpointError when unreadable."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.name} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable: {exc}") from exc
    return tensors, metadata


def save_checkpoint(
    path: Path, model: nn.Module, spec: TrainingSpec, extra: dict[str, str] | None = None
) -> SavedCheckpoint:
    """Writes weights and spec to ``path`` atomically and durably."""
    metadata = {**(extra or {}), "format": FORMAT, "spec": spec.model_dump_json()}
    return save_tensors(path, dict(model.state_dict()), metadata)


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(
    path: Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainingSpec]:
    """Rebuilds the module from the spec in the header and loads the weights; refuses a digest mismatch."""
    if expected_sha256 is not None and path.is_file() and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"checkpoint {path.name} does not match its recorded sha256")
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise CheckpointError(f"checkpoint {path.name} is not an {FORMAT} checkpoint")
    try:
        spec = TrainingSpec.model_validate(json.loads(metadata["spec"]))
    except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError are both ValueErrors
        raise CheckpointError(f"checkpoint {path.name} carries an invalid spec: {exc}") from exc
    model = build_mlp(spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path.name} does not fit its spec: {exc}") from exc
    return model.to(device).eval(), spec
