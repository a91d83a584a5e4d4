"""The peer for the /v1/predict benchmark: LitServe serving the same MLP checkpoint as the service, the way
a user who picked LitServe for this model would write it.

The work per request is the service's: the upload's ``file`` field decoded with Pillow and reduced to 28x28
by the project's own preprocessing (models.preprocessing), the checkpoint loaded with
models.checkpoints.load_checkpoint, one softmax and top 3 per image, the answer as JSON with the top classes.

LitServe's settings, as its documentation recommends for a small model on a CPU (the fair peer, not a
handicapped one):

- ``accelerator="cpu"``, ``workers_per_device`` = the machine's cores (LitServer's docstring: "For CPU, set
  to the number of cores available on the machine"): inference worker processes, each decoding, batching
  and running its own copy of the model;
- ``num_api_servers`` left to LitServe: one uvicorn process per inference worker (its default);
- ``fast_queue=True``: ZeroMQ between the HTTP servers and the workers, which the docs recommend above about
  100 requests/s (this benchmark runs at over 1,000);
- dynamic batching, ``max_batch_size=32`` and ``batch_timeout=0.002`` (2 ms: the docs leave the timeout to
  the model; 2 ms is the service's own FMNIST_PREDICT_MAX_WAIT_MS, and it is what a 1 ms forward pass can
  afford to wait);
- one OpenMP thread per process (bench.predict_http sets OMP_NUM_THREADS=1, as the service does for its
  forward passes): several worker processes share the cores, and a 784-256-10 forward pass gains nothing
  from more threads;
- ``generate_client_file=False`` (it would write client.py into the working folder), log level warning,
  and LitServe's default request timeout (30 s).

LitServe is not one of the project's dependencies: bench.predict_http installs it into bench/.litserve
(git-ignored) on first use and runs this file with the project's python and that folder first on
PYTHONPATH, so torch, Pillow and the project come from the project's environment and LitServe's own
fastapi and uvicorn from that folder.

    PYTHONPATH=bench/.litserve .venv/bin/python -m bench.litserve_app --checkpoint PATH [--port 8001]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi import HTTPException

from models.checkpoints import load_checkpoint
from models.data import CLASS_NAMES, images_to_inputs
from models.preprocessing import ImageRejected, preprocess_upload

TOP_K = 3


class FashionMnistAPI(ls.LitAPI):  # type: ignore[misc]  # litserve is not installed where mypy runs
    """POST /v1/predict, multipart field ``file``: the top classes of one image."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(max_batch_size=32, batch_timeout=0.002, api_path="/v1/predict")
        self.checkpoint = checkpoint

    def setup(self, device: str) -> None:
        self.model, _ = load_checkpoint(self.checkpoint, device=device)
        self.model_id = self.checkpoint.stem

    # No annotation on ``request``: LitServe reads it to choose how to parse the body (none: a form or JSON, as
    # the Content-Type says), and a string annotation (this module's ``from __future__``) would make it a query.
    def decode_request(self, request) -> torch.Tensor:  # type: ignore[no-untyped-def]
        try:
            return preprocess_upload(request["file"].file.read())
        except ImageRejected as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> list[tuple[list[float], list[int]]]:
        logits = self.model(images_to_inputs(images))
        values, indices = torch.softmax(logits, dim=1).topk(TOP_K, dim=1)
        return list(zip(values.tolist(), indices.tolist(), strict=True))

    def unbatch(self, output: list[tuple[list[float], list[int]]]) -> list[tuple[list[float], list[int]]]:
        return output

    def encode_response(self, output: tuple[list[float], list[int]]) -> dict[str, Any]:
        probabilities, classes = output
        return {
            "model_id": self.model_id,
            "predictions": [
                {"class_id": c, "class_name": CLASS_NAMES[c], "probability": p}
                for p, c in zip(probabilities, classes, strict=True)
            ],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a safetensors checkpoint of the service")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers-per-device", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    server = ls.LitServer(
        FashionMnistAPI(args.checkpoint),
        accelerator="cpu",
        workers_per_device=args.workers_per_device,
        fast_queue=True,
    )
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
