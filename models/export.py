"""ONNX export of a trained MLP, for serving outside this project (onnxruntime, other runtimes)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Writes ``model`` as ONNX to ``path`` (atomically): input ``images`` float32 (batch, 28, 28) in [0, 1],
    light garment on black; output ``logits`` (batch, 10). The batch dimension is dynamic."""
    model = model.eval()
    program = torch.onnx.export(
        model,
        (torch.zeros(2, 28, 28),),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
        dynamo=True,
        verbose=False,
    )
    assert program is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(program.model_proto.SerializeToString())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
