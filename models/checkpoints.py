"""Checkpoints that describe themselves: safetensors weights with the validated spec in the header.

Loading never unpickles anything: the spec is JSON in the safetensors metadata, it rebuilds the module,
and the weights are loaded into that module strictly.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from models.files import bytes_sha256, write_atomic
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


def serialize_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors encoding of ``tensors`` (copied to the CPU, made contiguous) with ``metadata`` in its
    header: what every artifact of this project that holds tensors is made of."""
    cpu = {name: value.detach().to("cpu").contiguous() for name, value in tensors.items()}
    return save_safetensors(cpu, metadata=metadata)


def checkpoint_bytes(model: nn.Module, spec: TrainingSpec, extra: dict[str, str] | None = None) -> bytes:
    """A checkpoint of ``model``: its weights, with the validated ``spec`` (JSON) and ``extra`` in the header."""
    metadata = {**(extra or {}), "format": FORMAT, "spec": spec.model_dump_json()}
    return serialize_tensors(dict(model.state_dict()), metadata)


# A temporary file this much older than now is a write that a killed process never finished (seconds): the
# workers' sweep at start and retention (fmnist gc) both use it.
STALE_TEMPORARY_SECONDS = 3600.0


def sweep_temporary_files(folder: Path, older_than: float, now: float | None = None) -> list[Path]:
    """Removes what interrupted atomic writes (``models.files.write_atomic``) left in ``folder``: files named
    ``.<name>.<random>.tmp`` last modified more than ``older_than`` seconds before ``now`` (default: the current
    time). A write in progress is a fresh file, so another process's is never touched. Returns the paths
    removed; a missing folder has none."""
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


def parse_tensors(data: bytes, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on the CPU) and header metadata of safetensors bytes; CheckpointError naming ``label`` when
    they are not a whole, well-formed safetensors encoding."""
    try:
        tensors = load_safetensors(data)
        (header_size,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + header_size])
    except (SafetensorError, struct.error, ValueError) as exc:
        raise CheckpointError(f"checkpoint {label} is unreadable: {exc}") from exc
    metadata = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
    return tensors, {str(key): str(value) for key, value in metadata.items()}


def save_checkpoint(
    path: Path, model: nn.Module, spec: TrainingSpec, extra: dict[str, str] | None = None
) -> SavedCheckpoint:
    """Writes weights and spec to ``path`` atomically and durably."""
    data = checkpoint_bytes(model, spec, extra)
    write_atomic(path, data)
    return SavedCheckpoint(path=path, sha256=bytes_sha256(data), size_bytes=len(data))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise CheckpointError(f"checkpoint {path.name} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable: {exc}") from exc


def load_checkpoint(
    path: Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainingSpec]:
    """Rebuilds the module from the checkpoint file at ``path``: ``checkpoint_from_bytes`` of its bytes."""
    return checkpoint_from_bytes(_read(path), path.name, expected_sha256, device)


def checkpoint_from_bytes(
    data: bytes, label: str, expected_sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainingSpec]:
    """Rebuilds the module from the spec in the checkpoint's header and loads its weights strictly; the module
    is on ``device`` in eval mode. CheckpointError (naming ``label``) for a digest other than
    ``expected_sha256``, bytes that are not an fmnist-mlp/1 checkpoint, an invalid spec or weights that do not
    fit it."""
    if expected_sha256 is not None and bytes_sha256(data) != expected_sha256:
        raise CheckpointError(f"checkpoint {label} does not match its recorded sha256")
    tensors, metadata = parse_tensors(data, label)
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise CheckpointError(f"checkpoint {label} is not an {FORMAT} checkpoint")
    try:
        spec = TrainingSpec.model_validate(json.loads(metadata["spec"]))
    except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError are both ValueErrors
        raise CheckpointError(f"checkpoint {label} carries an invalid spec: {exc}") from exc
    model = build_mlp(spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {label} does not fit its spec: {exc}") from exc
    return model.to(device).eval(), spec
