"""ONNX export of a trained MLP, for serving outside this project (onnxruntime, other runtimes)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.files import write_atomic

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def onnx_bytes(model: nn.Module) -> bytes:
    """``model`` as an ONNX model: input ``images`` float32 (batch, 28, 28) in [0, 1], light garment on black;
    output ``logits`` (batch, 10). The batch dimension is dynamic."""
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
    return bytes(program.model_proto.SerializeToString())


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Writes ``onnx_bytes(model)`` to ``path`` atomically (models.files.write_atomic)."""
    write_atomic(path, onnx_bytes(model), durable=False)
    return path
