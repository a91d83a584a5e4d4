"""The best-mlp preset on the real data: the epoch it selects (best validation accuracy), its test
accuracy, and the time it took on this machine's device.

    .venv/bin/python -m bench.best_mlp [--device cpu|cuda] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.common import data_dir
from models.data import load_fashion_mnist, to_device
from models.presets import resolve_spec
from models.training import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as cache:
        data = to_device(load_fashion_mnist(data_dir(), Path(cache)), device)
    spec = resolve_spec("best-mlp", {})
    started = time.perf_counter()
    result = Trainer(spec, data, seed=args.seed).run(
        on_epoch=lambda m: print(
            f"epoch {m.epoch:3d}  loss {m.train_loss:.4f}  val {m.val_acc:.4f}  test {m.test_acc:.4f}", flush=True
        )
    )
    seconds = time.perf_counter() - started
    selected = result.selected
    assert selected is not None
    print(
        json.dumps(
            {
                "device": str(device),
                "seed": args.seed,
                "selected_epoch": selected.epoch,
                "val_acc": selected.val_acc,
                "test_acc": selected.test_acc,
                "seconds": round(seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
