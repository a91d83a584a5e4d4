"""The bare in-memory loop: the data set already on the device as tensors, a plain PyTorch loop.

No service, no database, no checkpoints: the floor that the service's own training is measured against.
Same MLP, SGD and per-epoch test evaluation as the service. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from bench.common import data_dir, peak_rss_mib
from models.data import load_fashion_mnist, to_device
from models.network import build_mlp
from models.spec import TrainingSpec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, nargs="*", default=[256])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = TrainingSpec(hidden_layers=args.hidden, epochs=args.epochs)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as cache:
        data = to_device(load_fashion_mnist(data_dir(), Path(cache)), device)
    net = build_mlp(spec, generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr)
    n = len(data.train_x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _epoch in range(spec.epochs):
        net.train()
        order = torch.randperm(n, device=device)
        for start in range(0, n, spec.batch_size):
            index = order[start : start + spec.batch_size]
            loss = F.cross_entropy(net(data.train_x[index]), data.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            test_acc = (net(data.test_x).argmax(1) == data.test_y).float().mean().item()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    print(json.dumps({"seconds": seconds, "test_acc": test_acc, "peak_mib": peak}))


if __name__ == "__main__":
    main()
