"""The reference peer: the d2l data path, as in "Dive into Deep Learning" chapters 3-4.

torchvision FashionMNIST + ToTensor + DataLoader(batch 256, shuffle, num_workers=4); every batch is moved
to the device inside the loop; the same MLP, initialisation and SGD as the service; test accuracy each
epoch through a DataLoader, like d2l's evaluate_accuracy. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from bench.common import data_dir, peak_rss_mib
from models.data import locate_idx_files
from models.network import build_mlp
from models.spec import TrainingSpec


def prepare_root(scratch: Path) -> Path:
    """torchvision's FashionMNIST wants the raw files in <root>/FashionMNIST/raw."""
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    from torchvision.datasets.utils import extract_archive

    for name, path in (locate_idx_files(data_dir()) or {}).items():
        if path.suffix == ".gz":
            extract_archive(str(path), str(raw))
        else:
            (raw / name).symlink_to(path)
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, nargs="*", default=[256])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    device = torch.device(args.device)
    spec = TrainingSpec(hidden_layers=args.hidden, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as scratch:
        root = prepare_root(Path(scratch))
        to_tensor = transforms.ToTensor()
        train = datasets.FashionMNIST(str(root), train=True, transform=to_tensor)
        test = datasets.FashionMNIST(str(root), train=False, transform=to_tensor)
        torch.manual_seed(0)
        net = build_mlp(spec, generator=torch.Generator().manual_seed(0)).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr)
        train_iter = DataLoader(train, spec.batch_size, shuffle=True, num_workers=args.workers)
        test_iter = DataLoader(test, spec.batch_size, shuffle=False, num_workers=args.workers)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for _epoch in range(spec.epochs):
            net.train()
            for inputs, labels in train_iter:
                inputs, labels = inputs.to(device), labels.to(device)
                loss = F.cross_entropy(net(inputs), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            net.eval()
            correct = 0
            with torch.no_grad():
                for inputs, labels in test_iter:
                    inputs, labels = inputs.to(device), labels.to(device)
                    correct += int((net(inputs).argmax(1) == labels).sum())
        seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    print(json.dumps({"seconds": seconds, "test_acc": correct / len(test), "peak_mib": peak}))


if __name__ == "__main__":
    main()
