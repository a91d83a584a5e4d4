"""Packed training: N MLPs of one shape trained at once as one stacked model.

Members share what fixes the shape of a step (``pack_key``: layer widths, activation, dropout rate, input
standardisation, optimizer kind, batch size, epochs, validation fraction) and keep everything else their
own: learning rate and schedule, momentum, Nesterov, weight decay, initialisation, label smoothing, seed
(its own initial weights, train/validation split, shuffle and dropout stream), early stopping and time
limit. Weights are stacked as (N, out, in) and every layer is one batched matmul (``torch.baddbmm``); the
losses of the members are summed, so each member's gradient is the one it would have alone.

A member trained in a pack equals the same spec and seed trained alone by ``models.training.Trainer``
(eager step) within float tolerance: same initial weights, same batches, same dropout masks, the same
update rule (``torch.optim``'s SGD, Adam and AdamW written out with a learning rate, momentum and weight
decay per member). A member that stops (its ``should_stop``, early stopping, its ``max_seconds``) leaves
the pack at once: its slices are cut out of every stacked tensor and the others go on unchanged.

The step is plain tensor code, eager on any device; on the CPU a pack of 8 members of the default shape
runs in a small multiple of one member's time.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.augment import augment_batch, augments
from models.data import DeviceDataset
from models.network import _ACTIVATIONS, Standardize, build_mlp
from models.schedule import lr_at
from models.spec import Optimizer, TrainingSpec
from models.training import (
    _AUGMENT_SALT,
    _DROPOUT_SALT,
    EpochMetrics,
    TimeLimitExceeded,
    TrainingStopped,
    TrainResult,
    train_val_split,
)

# Rows of a shared input (the test set) per batched forward pass in evaluation, for all members together.
EVAL_ELEMENTS = 64 * 1024 * 1024
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

PackKey = tuple[Any, ...]


def pack_key(spec: TrainingSpec) -> PackKey:
    """What members of one pack must share: the fields that fix the shape and number of steps."""
    return (
        tuple(spec.layer_sizes),
        spec.activation.value,
        spec.dropout,
        spec.normalize_inputs,
        spec.optimizer.value,
        spec.batch_size,
        spec.epochs,
        spec.val_fraction,
    )


def pack_digest(spec: TrainingSpec) -> str:
    """``pack_key`` as 32 hex digits, to store beside a job and match in a query."""
    return hashlib.sha256(json.dumps(pack_key(spec)).encode()).hexdigest()[:32]


@dataclass
class MemberOutcome:
    """How one member's run ended: ``result`` when it trained to the end (or stopped early on validation),
    else ``error`` (``TrainingStopped`` when its ``should_stop`` said so, ``TimeLimitExceeded``)."""

    result: TrainResult | None = None
    error: Exception | None = None


class PackedTrainer:
    """Trains ``specs[i]`` with seed ``seeds[i]`` for every i, as one stacked model on ``data.device``.

    Raises ValueError when the specs do not share a ``pack_key``.
    """

    def __init__(self, specs: Sequence[TrainingSpec], seeds: Sequence[int], data: DeviceDataset) -> None:
        if not specs or len(specs) != len(seeds):
            raise ValueError("a pack needs one seed per spec, and at least one spec")
        keys = {pack_key(spec) for spec in specs}
        if len(keys) != 1:
            raise ValueError(f"these specs cannot share a pack: {len(keys)} different shapes")
        self.specs, self.data = list(specs), data
        self.device = data.device
        first = specs[0]
        self.optimizer = first.optimizer
        self.batch_size, self.epochs = first.batch_size, first.epochs
        self.activation = _ACTIVATIONS[first.activation]()
        self.dropout = first.dropout
        # Per member, in the order of ``specs``: initial weights, split, statistics, random streams.
        weights: list[list[torch.Tensor]] = []
        biases: list[list[torch.Tensor]] = []
        means, stds = [], []
        self.train_index: list[torch.Tensor | None] = []
        self.val_index: list[torch.Tensor | None] = []
        for spec, seed in zip(specs, seeds, strict=True):
            model = build_mlp(spec, generator=torch.Generator().manual_seed(seed))
            linears = [m for m in model if isinstance(m, nn.Linear)]
            weights.append([m.weight.detach() for m in linears])
            biases.append([m.bias.detach() for m in linears])
            train_index, val_index = train_val_split(len(data.train_x), spec.val_fraction, seed, self.device)
            self.train_index.append(train_index)
            self.val_index.append(val_index)
            rows = data.train_x if train_index is None else data.train_x[train_index]
            means.append(rows.mean() if spec.normalize_inputs else torch.zeros((), device=self.device))
            stds.append(rows.std() if spec.normalize_inputs else torch.ones((), device=self.device))
        layers = len(weights[0])
        self.weights = [
            torch.stack([member[layer] for member in weights]).to(self.device).requires_grad_()
            for layer in range(layers)
        ]
        self.biases = [
            torch.stack([member[layer] for member in biases]).to(self.device).requires_grad_()
            for layer in range(layers)
        ]
        self.mean = torch.stack(means).to(self.device)
        self.std = torch.stack(stds).to(self.device)
        self.normalize = first.normalize_inputs
        self.shuffles = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
        self.dropout_generators = [
            torch.Generator(device=self.device).manual_seed(seed ^ _DROPOUT_SALT) for seed in seeds
        ]
        self.augment_generators = [
            torch.Generator(device=self.device).manual_seed(seed ^ _AUGMENT_SALT) for seed in seeds
        ]
        first_index = self.train_index[0]
        self.n_train = len(first_index) if first_index is not None else len(data.train_x)
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        self.momentum = self._column([spec.momentum for spec in specs])
        self.weight_decay = self._column([spec.weight_decay for spec in specs])
        self.label_smoothing = self._column([spec.label_smoothing for spec in specs])
        self.nesterov = torch.tensor([spec.nesterov for spec in specs], device=self.device)
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in range(2 * layers)]  # optimizer buffers
        self.step_count = 0
        # ``members[p]``: which of ``specs`` sits at position p of the stacked tensors.
        self.members = list(range(len(specs)))
        self._note_terms()
        self.epoch = 0
        self.history: list[list[EpochMetrics]] = [[] for _ in specs]
        self.best_epoch: list[int | None] = [None] * len(specs)
        self.best_state: list[list[torch.Tensor] | None] = [None] * len(specs)
        self.outcomes: dict[int, MemberOutcome] = {}
        self._on_end: Callable[[int, MemberOutcome], None] | None = None

    def _note_terms(self) -> None:
        """Which update terms some member of the pack uses: read from the specs (a flag per term, not a test on
        the device each step, which would wait for the device)."""
        specs = [self.specs[member] for member in self.members]
        self._decays = any(spec.weight_decay > 0 for spec in specs)
        self._momentum = any(spec.momentum > 0 for spec in specs)
        self._any_nesterov = any(spec.nesterov for spec in specs)
        self._all_nesterov = all(spec.nesterov for spec in specs)

    def _column(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    @property
    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters, layer by layer: weight (N, out, in), then bias (N, out)."""
        return [tensor for pair in zip(self.weights, self.biases, strict=True) for tensor in pair]

    # -- the step ------------------------------------------------------------------------------------
    def _forward(self, inputs: torch.Tensor, train: bool) -> torch.Tensor:
        """(N, B, 784) or (B, 784) shared inputs -> (N, B, 10) logits."""
        hidden = inputs
        if self.normalize:
            hidden = (hidden - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)
        if hidden.dim() == 2:
            hidden = hidden.expand(len(self.members), *hidden.shape)
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            # x @ W^T as nn.Linear computes it: the same kernels' orientation, so the same sums as a lone run.
            hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
            if index < last:
                hidden = self.activation(hidden)
                if train and self.dropout > 0:
                    hidden = hidden * self._keep_masks(hidden.shape[1:]) / (1.0 - self.dropout)
        return hidden

    def _keep_masks(self, shape: torch.Size) -> torch.Tensor:
        # Each member's mask from its own stream, drawn as a lone member draws it (models.network.SeededDropout).
        return torch.stack(
            [
                torch.rand(shape, device=self.device, generator=self.dropout_generators[member]) >= self.dropout
                for member in self.members
            ]
        )

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each member's mean cross-entropy with its own label smoothing: (N,)."""
        log_probs = F.log_softmax(logits, dim=2)
        nll = -log_probs.gather(2, labels.unsqueeze(2)).squeeze(2).mean(dim=1)
        smooth = -log_probs.mean(dim=2).mean(dim=1)
        return (1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth

    @torch.no_grad()
    def _update(self, lrs: torch.Tensor) -> None:
        """One optimizer step for every member, as torch.optim's SGD, Adam or AdamW would take it. A term no
        member uses (weight decay, momentum, Nesterov) is skipped: each costs a pass over every weight."""
        self.step_count += 1
        decays = self._decays
        for slot, param in enumerate(self.parameters):
            grad = param.grad
            assert grad is not None
            shape = (-1,) + (1,) * (param.dim() - 1)
            lr, decay = lrs.view(shape), self.weight_decay.view(shape)
            state = self.state[slot]
            if self.optimizer is Optimizer.sgd:
                if decays:
                    grad = torch.addcmul(grad, decay, param)
                direction = grad
                if self._momentum:
                    momentum = self.momentum.view(shape)
                    # buffer = momentum * buffer + grad: with momentum 0 that is grad itself, as torch's SGD takes.
                    buffer = state.setdefault("momentum", torch.zeros_like(param))
                    buffer.mul_(momentum).add_(grad)
                    direction = buffer
                    if self._any_nesterov:
                        ahead = torch.addcmul(grad, momentum, buffer)
                        direction = (
                            ahead if self._all_nesterov else torch.where(self.nesterov.view(shape), ahead, buffer)
                        )
                param.addcmul_(lr, direction, value=-1.0)
            else:
                if self.optimizer is Optimizer.adamw:
                    if decays:
                        param.mul_(1.0 - lr * decay)
                elif decays:
                    grad = torch.addcmul(grad, decay, param)
                beta1, beta2 = ADAM_BETAS
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["exp_avg"].lerp_(grad, 1.0 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                correction1 = 1.0 - beta1**self.step_count
                correction2 = 1.0 - beta2**self.step_count
                denominator = (state["exp_avg_sq"].sqrt() / math.sqrt(correction2)).add_(ADAM_EPS)
                param.addcdiv_(state["exp_avg"], denominator.div_(lr / correction1), value=-1.0)
            param.grad = None

    # -- running -------------------------------------------------------------------------------------
    def run(
        self,
        on_epoch: Callable[[int, EpochMetrics], None] | None = None,
        should_stop: Callable[[int], bool] | None = None,
        on_end: Callable[[int, MemberOutcome], None] | None = None,
    ) -> list[MemberOutcome]:
        """Trains every member to its end; returns one outcome per spec, in order. ``on_epoch(i, metrics)``
        after each epoch of member i (``member_state(i)`` is its resume state then); ``should_stop(i)`` is
        asked before every step (keep it cheap); ``on_end(i, outcome)`` as soon as member i leaves the pack."""
        self._on_end = on_end
        started = time.monotonic()
        deadlines = [started + spec.max_seconds if spec.max_seconds is not None else math.inf for spec in self.specs]
        while self.members and self.epoch < self.epochs:
            epoch_started = time.perf_counter()
            loss_sums, correct = self._train_epoch(should_stop, deadlines)
            if not self.members:
                break
            self.epoch += 1
            seconds = time.perf_counter() - epoch_started
            test_acc = self._accuracy(self.data.test_x, self.data.test_y)
            finished: list[int] = []
            for position, member in enumerate(self.members):
                spec = self.specs[member]
                val_index = self.val_index[member]
                val_acc = None
                if val_index is not None:
                    val_acc = self._member_accuracy(
                        position, self.data.train_x[val_index], self.data.train_y[val_index]
                    )
                metrics = EpochMetrics(
                    epoch=self.epoch,
                    train_loss=loss_sums[position] / self.n_train,
                    train_acc=correct[position] / self.n_train,
                    val_acc=val_acc,
                    test_acc=test_acc[position],
                    lr=lr_at(spec, self.epoch * self.steps_per_epoch - 1, self.steps_per_epoch),
                    seconds=seconds,
                )
                self.history[member].append(metrics)
                best = self.best_epoch[member]
                if val_acc is not None and (best is None or val_acc > self.history[member][best - 1].val_acc):  # type: ignore[operator]
                    self.best_epoch[member] = self.epoch
                    self.best_state[member] = [tensor[position].detach().clone() for tensor in self.parameters]
                if on_epoch is not None:
                    on_epoch(member, metrics)
                if self._patience_exhausted(member) or self.epoch == self.epochs:
                    finished.append(member)
                elif time.monotonic() > deadlines[member]:
                    self._end(member, MemberOutcome(error=TimeLimitExceeded.of(spec)))
                    finished.append(member)
            for member in finished:
                if member not in self.outcomes:
                    self._end(member, MemberOutcome(result=self._result(member)))
            self._drop(finished)
        return [self.outcomes[member] for member in range(len(self.specs))]

    def _patience_exhausted(self, member: int) -> bool:
        patience = self.specs[member].early_stopping_patience
        best = self.best_epoch[member]
        return patience is not None and best is not None and self.epoch - best >= patience

    def _train_epoch(
        self, should_stop: Callable[[int], bool] | None, deadlines: list[float]
    ) -> tuple[list[float], list[int]]:
        orders = []
        for member in self.members:
            order = torch.randperm(self.n_train, device=self.device, generator=self.shuffles[member])
            train_index = self.train_index[member]
            orders.append(train_index[order] if train_index is not None else order)
        order = torch.stack(orders)  # (N, n_train): each member's own shuffle of its own training rows
        loss_sums = torch.zeros(len(self.members), device=self.device)
        correct = torch.zeros(len(self.members), dtype=torch.int64, device=self.device)
        first_step = self.epoch * self.steps_per_epoch
        for step in range(self.steps_per_epoch):
            leaving = self._leaving(should_stop, deadlines)
            if leaving:
                keep = [position for position, member in enumerate(self.members) if member not in leaving]
                self._drop(leaving)
                if not self.members:
                    return [], []
                order, loss_sums, correct = order[keep], loss_sums[keep], correct[keep]
            lrs = self._column(
                [lr_at(self.specs[member], first_step + step, self.steps_per_epoch) for member in self.members]
            )
            index = order[:, step * self.batch_size : (step + 1) * self.batch_size]
            inputs, labels = self._augmented(self.data.train_x[index]), self.data.train_y[index]
            logits = self._forward(inputs, train=True)
            losses = self._losses(logits, labels)
            losses.sum().backward()
            self._update(lrs)
            # Accumulated on the device: a .item() per step would synchronise a GPU every step.
            loss_sums += losses.detach() * index.shape[1]
            correct += (logits.detach().argmax(dim=2) == labels).sum(dim=1)
        return loss_sums.tolist(), [int(value) for value in correct.tolist()]

    def _leaving(self, should_stop: Callable[[int], bool] | None, deadlines: list[float]) -> list[int]:
        """Members that must stop before this step, their outcome recorded."""
        now = time.monotonic()
        leaving = []
        for member in self.members:
            if should_stop is not None and should_stop(member):
                self._end(member, MemberOutcome(error=TrainingStopped(self.epoch)))
                leaving.append(member)
            elif now > deadlines[member]:
                self._end(member, MemberOutcome(error=TimeLimitExceeded.of(self.specs[member])))
                leaving.append(member)
        return leaving

    def _augmented(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, B, 784) batches, each member's augmented with its own spec and stream (as it would be alone)."""
        if not any(augments(self.specs[member]) for member in self.members):
            return inputs
        return torch.stack(
            [
                augment_batch(inputs[position], self.specs[member], self.augment_generators[member])
                if augments(self.specs[member])
                else inputs[position]
                for position, member in enumerate(self.members)
            ]
        )

    def _end(self, member: int, outcome: MemberOutcome) -> None:
        self.outcomes[member] = outcome
        if self._on_end is not None:
            self._on_end(member, outcome)

    def _drop(self, members: list[int]) -> None:
        """Cuts ``members`` out of every stacked tensor; the others go on as they were."""
        if not members:
            return
        keep = [position for position, member in enumerate(self.members) if member not in members]
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        with torch.no_grad():
            self.weights = [weight[rows].detach().requires_grad_() for weight in self.weights]
            self.biases = [bias[rows].detach().requires_grad_() for bias in self.biases]
            self.state = [{name: buffer[rows] for name, buffer in state.items()} for state in self.state]
        self.mean, self.std = self.mean[rows], self.std[rows]
        self.momentum, self.weight_decay = self.momentum[rows], self.weight_decay[rows]
        self.label_smoothing, self.nesterov = self.label_smoothing[rows], self.nesterov[rows]
        self.members = [self.members[position] for position in keep]
        self._note_terms()

    # -- evaluation and results ------------------------------------------------------------------------
    @torch.no_grad()
    def _accuracy(self, inputs: torch.Tensor, labels: torch.Tensor) -> list[float]:
        """Every member's top-1 accuracy on one shared set of inputs."""
        widest = max(weight.shape[1] for weight in self.weights)
        rows = max(1, EVAL_ELEMENTS // (len(self.members) * widest))
        correct = torch.zeros(len(self.members), dtype=torch.int64, device=self.device)
        for start in range(0, len(inputs), rows):
            logits = self._forward(inputs[start : start + rows], train=False)
            correct += (logits.argmax(dim=2) == labels[start : start + rows]).sum(dim=1)
        return [value / max(len(inputs), 1) for value in correct.tolist()]

    @torch.no_grad()
    def _member_accuracy(self, position: int, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """One member's top-1 accuracy on its own inputs (its validation rows)."""
        model = self._module(position, [tensor[position] for tensor in self.parameters])
        model.eval()
        logits = model(inputs)
        return (logits.argmax(dim=1) == labels).sum().item() / max(len(inputs), 1)

    def _module(self, position: int, tensors: list[torch.Tensor]) -> nn.Sequential:
        """The member at ``position`` as the model ``build_mlp`` makes for its spec, holding ``tensors``."""
        member = self.members[position]
        model = build_mlp(self.specs[member]).to(self.device)
        linears = [m for m in model if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for layer, linear in enumerate(linears):
                linear.weight.copy_(tensors[2 * layer])
                linear.bias.copy_(tensors[2 * layer + 1])
            standardizer = next((m for m in model if isinstance(m, Standardize)), None)
            if standardizer is not None:
                standardizer.mean.copy_(self.mean[position])
                standardizer.std.copy_(self.std[position])
        return model

    def member_state(self, member: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Member ``member``'s resume state, as ``Trainer.state()`` writes it for a lone run of its spec and seed
        after the same epoch: a member that leaves the pack (a crash, a retry) resumes alone from it.
        Copies, safe to keep while the pack trains on."""
        position = self.members.index(member)
        current = [tensor[position].detach() for tensor in self.parameters]
        tensors = {f"model.{k}": v.clone() for k, v in self._module(position, current).state_dict().items()}
        best = self.best_state[member]
        if best is not None:
            tensors.update({f"best.{k}": v.clone() for k, v in self._module(position, best).state_dict().items()})

        def lone(buffer: torch.Tensor) -> torch.Tensor:
            return buffer[position].clone()

        for slot, state in enumerate(self.state):
            if self.optimizer is Optimizer.sgd:
                if "momentum" in state and self.specs[member].momentum > 0:
                    tensors[f"optim.{slot}.momentum_buffer"] = lone(state["momentum"])
            elif "exp_avg" in state:
                tensors[f"optim.{slot}.step"] = torch.tensor(float(self.step_count))
                tensors[f"optim.{slot}.exp_avg"] = lone(state["exp_avg"])
                tensors[f"optim.{slot}.exp_avg_sq"] = lone(state["exp_avg_sq"])
        tensors["rng.shuffle"] = self.shuffles[member].get_state()
        tensors["rng.dropout"] = self.dropout_generators[member].get_state()
        tensors["rng.augment"] = self.augment_generators[member].get_state()
        meta = {
            "epoch": self.epoch,
            "history": [metrics.as_dict() for metrics in self.history[member]],
            "best_epoch": self.best_epoch[member],
            "optimizer_scalars": {},
        }
        return tensors, meta

    def _result(self, member: int) -> TrainResult:
        position = self.members.index(member)
        best = self.best_state[member]
        tensors = best if best is not None else [tensor[position].detach() for tensor in self.parameters]
        model = self._module(position, tensors)
        model.eval()
        return TrainResult(
            model=model,
            history=list(self.history[member]),
            best_epoch=self.best_epoch[member],
            stopped_early=self._patience_exhausted(member),
        )
