"""The packed training engine against its references, side by side in one run, on the real data set.

An lr x seed sweep of one shape (default: 8 members, [256], 2 epochs, SGD, batch 256) trained three ways,
round by round interleaved so that a slow spell on a shared machine hits each:

- lone: one ``models.training.Trainer`` per member, one after another (what a worker does without packing);
- vmap: torch.func's model ensembling (``stack_module_state`` + ``vmap(functional_call)`` + ``torch.func.grad``,
  per-member SGD written over the stacked state): the peer an engineer would reach for;
- packed: ``models.packed.PackedTrainer`` (batched matmuls, every per-member setting, validation, stopping).

Each variant reports models/min over training alone (data already on the device) and the mean final test
accuracy, so a fast but wrong variant shows.

    .venv/bin/python -m bench.packed [--members 8] [--epochs 2] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from bench.common import data_dir, markdown_table
from models.data import DeviceDataset, load_fashion_mnist, to_device
from models.network import build_mlp
from models.packed import PackedTrainer
from models.spec import TrainingSpec
from models.training import Trainer, evaluate

LRS = [0.05, 0.1, 0.2, 0.4]


def sweep(members: int, epochs: int) -> tuple[list[TrainingSpec], list[int]]:
    specs = [TrainingSpec(hidden_layers=[256], epochs=epochs, lr=LRS[index % len(LRS)]) for index in range(members)]
    return specs, [index // len(LRS) for index in range(members)]


def lone(specs: list[TrainingSpec], seeds: list[int], data: DeviceDataset) -> list[float]:
    accuracies = []
    for spec, seed in zip(specs, seeds, strict=True):
        result = Trainer(spec, data, seed=seed, step_mode="eager").run()
        accuracies.append(result.history[-1].test_acc)
    return accuracies


def packed(specs: list[TrainingSpec], seeds: list[int], data: DeviceDataset) -> list[float]:
    outcomes = PackedTrainer(specs, seeds, data).run()
    return [outcome.result.history[-1].test_acc for outcome in outcomes if outcome.result is not None]


def vmapped(specs: list[TrainingSpec], seeds: list[int], data: DeviceDataset) -> list[float]:
    """torch.func model ensembling: the same initial weights and per-member shuffles, plain SGD per member."""
    models = [
        build_mlp(spec, generator=torch.Generator().manual_seed(seed)).to(data.device)
        for spec, seed in zip(specs, seeds, strict=True)
    ]
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    base = copy.deepcopy(models[0]).to("meta")
    lrs = torch.tensor([spec.lr for spec in specs], device=data.device)

    def loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    gradients = vmap(grad(loss))
    shuffles = [torch.Generator(device=data.device).manual_seed(seed) for seed in seeds]
    n, batch = len(data.train_x), specs[0].batch_size
    for _ in range(specs[0].epochs):
        order = torch.stack([torch.randperm(n, device=data.device, generator=g) for g in shuffles])
        for start in range(0, n, batch):
            index = order[:, start : start + batch]
            step = gradients(params, buffers, data.train_x[index], data.train_y[index])
            with torch.no_grad():
                for name, tensor in params.items():
                    tensor.sub_(lrs.view((-1,) + (1,) * (tensor.dim() - 1)) * step[name])
    accuracies = []
    for index, model in enumerate(models):
        model.load_state_dict({name: tensor[index] for name, tensor in params.items()})
        accuracies.append(evaluate(model, data.test_x, data.test_y))
    return accuracies


VARIANTS: dict[str, Callable[[list[TrainingSpec], list[int], DeviceDataset], list[float]]] = {
    "lone (one Trainer after another)": lone,
    "vmap (torch.func ensembling)": vmapped,
    "packed (PackedTrainer)": packed,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as cache:
        data = to_device(load_fashion_mnist(data_dir(), Path(cache)), device)
    specs, seeds = sweep(args.members, args.epochs)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    accuracy: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, variant in VARIANTS.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            accuracy[name] = variant(specs, seeds, data)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - started)
    reference = "lone (one Trainer after another)"
    rows = []
    for name in VARIANTS:
        ratios = [lone_s / mine for lone_s, mine in zip(seconds[reference], seconds[name], strict=True)]
        rows.append(
            [
                name,
                f"{statistics.median(seconds[name]):.1f}",
                f"{args.members / statistics.median(seconds[name]) * 60:.0f}",
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
                f"{statistics.mean(accuracy[name]):.4f}",
            ]
        )
    print(
        f"{args.members} members, [256], {args.epochs} epochs, batch 256, SGD, lr x seed; {device}; "
        f"{args.rounds} rounds, medians"
    )
    print(markdown_table(["variant", "s", "models/min", "throughput vs lone", "mean test acc"], rows))


if __name__ == "__main__":
    main()
