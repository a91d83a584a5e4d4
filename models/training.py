"""The training loop: minibatch steps over tensors already on the device.

It knows nothing of jobs or storage. The caller watches progress through ``on_epoch`` and stops a run
through ``should_stop``, which is asked before every step and must be cheap (an Event, not a query).

On CUDA the whole training step (batch gather, forward, backward, optimizer update, learning rate and
the running loss/accuracy sums) is captured once as a CUDA graph and replayed; the eager loop is the
fallback and the CPU path. A ``Trainer`` holds everything a run needs to continue after an interruption
(``state()`` / ``restore()``), so a requeued job resumes from its last finished epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.augment import augment_batch, augments
from models.data import DeviceDataset
from models.network import SeededDropout, build_mlp, input_standardizer
from models.schedule import lr_at
from models.spec import Optimizer, TrainingSpec

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 16384
_CAPTURE_LOCK = threading.Lock()
# Distinct random streams for the train/validation split, dropout and augmentation, all from the job's seed.
_SPLIT_SALT = 0x5EED_0001
_DROPOUT_SALT = 0x5EED_0002
_AUGMENT_SALT = 0x5EED_0003


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch: mean training loss and accuracy over its steps; validation and test accuracy after it."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float
    val_acc: float | None = None
    lr: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def selected(self) -> EpochMetrics | None:
        """The epoch whose weights ``model`` holds: the best on validation, else the last."""
        if not self.history:
            return None
        if self.best_epoch is None:
            return self.history[-1]
        return self.history[self.best_epoch - 1]

    @property
    def test_acc(self) -> float | None:
        return self.selected.test_acc if self.selected else None


class TrainingStopped(Exception):
    """``should_stop`` asked the loop to end early; the epochs finished so far were reported."""

    def __init__(self, completed_epochs: int) -> None:
        super().__init__(f"training stopped after {completed_epochs} completed epoch(s)")
        self.completed_epochs = completed_epochs


class TimeLimitExceeded(RuntimeError):
    """The run went past the spec's ``max_seconds``."""

    @classmethod
    def of(cls, spec: TrainingSpec) -> TimeLimitExceeded:
        return cls(f"the job ran past its max_seconds of {spec.max_seconds:g} s")


def train_val_split(
    n: int, val_fraction: float, seed: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The training and validation rows of a run with this seed, (indices, indices), or (None, None) without
    validation: a random ``val_fraction`` of the ``n`` training rows (at least one), held out."""
    if val_fraction == 0:
        return None, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed ^ _SPLIT_SALT))
    n_val = max(1, round(n * val_fraction))
    return order[n_val:].to(device), order[:n_val].to(device)


def make_optimizer(
    spec: TrainingSpec, model: nn.Module, lr: float | torch.Tensor, fused: bool
) -> torch.optim.Optimizer:
    params = list(model.parameters())
    options: dict[str, Any] = {"fused": True} if fused else {}
    if spec.optimizer is Optimizer.sgd:
        return torch.optim.SGD(
            params, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay, **options
        )
    if fused and params[0].is_cuda:
        options["capturable"] = True  # Adam's step counter stays on the device, so the step can be captured
    if spec.optimizer is Optimizer.adam:
        return torch.optim.Adam(params, lr=lr, weight_decay=spec.weight_decay, **options)
    return torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay, **options)


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy over ``inputs`` in a few large batches."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=inputs.device)
    for start in range(0, len(inputs), EVAL_BATCH_SIZE):
        logits = model(inputs[start : start + EVAL_BATCH_SIZE])
        correct += (logits.argmax(dim=1) == labels[start : start + EVAL_BATCH_SIZE]).sum()
    model.train(was_training)
    return correct.item() / max(len(inputs), 1)


def cuda_graphs_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


StepMode = Literal["eager", "static", "graph"]


class Trainer:
    """One run of a spec on a data set: model, optimizer, schedule position, RNGs and history.

    ``step_mode``: ``eager`` is the plain loop; ``static`` runs the step that CUDA graphs capture (static
    buffers, a device-side step counter, a fused optimizer with a tensor learning rate) without capturing
    it, on any device; ``graph`` captures it as CUDA graphs and replays them. By default (``cuda_graphs``
    None or True): ``graph`` on CUDA, ``eager`` elsewhere; ``cuda_graphs=False`` forces ``eager``.
    """

    def __init__(
        self,
        spec: TrainingSpec,
        data: DeviceDataset,
        *,
        seed: int,
        cuda_graphs: bool | None = None,
        step_mode: StepMode | None = None,
    ) -> None:
        self.spec, self.data, self.seed = spec, data, seed
        self.device = data.device
        if step_mode is None:
            step_mode = "graph" if cuda_graphs is not False and cuda_graphs_supported(self.device) else "eager"
        if step_mode == "graph" and not cuda_graphs_supported(self.device):
            raise ValueError("CUDA graphs need a CUDA device")
        self.step_mode: StepMode = step_mode
        self.static_step = step_mode != "eager"
        self.use_graphs = step_mode == "graph"
        self.model = build_mlp(spec, generator=torch.Generator().manual_seed(seed)).to(self.device)
        self.dropout_generator = torch.Generator(device=self.device).manual_seed(seed ^ _DROPOUT_SALT)
        self.dropouts = [m for m in self.model.modules() if isinstance(m, SeededDropout)]
        for module in self.dropouts:
            module.generator = self.dropout_generator
        self.augment = augments(spec)
        self.augment_generator = torch.Generator(device=self.device).manual_seed(seed ^ _AUGMENT_SALT)
        random_step = bool(self.dropouts) or self.augment
        if self.use_graphs and random_step and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            # This torch cannot replay a graph with a generator of its own: run the same step uncaptured.
            self.step_mode, self.use_graphs = "static", False
        self.train_index, self.val_index = train_val_split(len(data.train_x), spec.val_fraction, seed, self.device)
        self.n_train = len(self.train_index) if self.train_index is not None else len(data.train_x)
        self._standardize()
        self.shuffle = torch.Generator(device=self.device).manual_seed(seed)
        self.steps_per_epoch = math.ceil(self.n_train / spec.batch_size)
        self.lr_tensor = torch.tensor(spec.lr, device=self.device) if self.static_step else None
        self.optimizer = make_optimizer(
            spec, self.model, self.lr_tensor if self.lr_tensor is not None else spec.lr, fused=self.static_step
        )
        self.epoch = 0
        self.history: list[EpochMetrics] = []
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self._pending_optimizer_state: dict[str, Any] | None = None
        self._graph_step: _GraphStep | None = None

    # -- set-up -----------------------------------------------------------------------------------
    def _standardize(self) -> None:
        standardizer = input_standardizer(self.model)
        if standardizer is None:
            return
        rows = self.data.train_x if self.train_index is None else self.data.train_x[self.train_index]
        standardizer.mean.fill_(rows.mean())
        standardizer.std.fill_(rows.std())

    # -- resume -----------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue this run, as tensors and JSON-able values (no pickling).

        The tensors are the live weights and optimizer buffers, not copies: save them (or clone them)
        before training goes on.
        """
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        optimizer = self.optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in optimizer["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = value
        tensors["rng.shuffle"] = self.shuffle.get_state()
        tensors["rng.dropout"] = self.dropout_generator.get_state()
        tensors["rng.augment"] = self.augment_generator.get_state()
        meta = {
            "epoch": self.epoch,
            "history": [m.as_dict() for m in self.history],
            "best_epoch": self.best_epoch,
            "optimizer_scalars": scalars,
        }
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continues from a ``state()`` taken after some epoch of the same spec and seed."""
        prefix = {"model.": {}, "best.": {}}  # type: dict[str, dict[str, torch.Tensor]]
        optimizer_state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            for start, bucket in prefix.items():
                if key.startswith(start):
                    bucket[key.removeprefix(start)] = value
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        for index, values in meta.get("optimizer_scalars", {}).items():
            optimizer_state.setdefault(int(index), {}).update(values)
        self.model.load_state_dict(prefix["model."])
        self.best_state = {k: v.to(self.device) for k, v in prefix["best."].items()} or None
        full = {"state": optimizer_state, "param_groups": self.optimizer.state_dict()["param_groups"]}
        if self.static_step:
            self._pending_optimizer_state = full  # loaded after the graph warm-up, before capture
        else:
            self.optimizer.load_state_dict(full)
        self.shuffle.set_state(tensors["rng.shuffle"])
        self.dropout_generator.set_state(tensors["rng.dropout"])
        if "rng.augment" in tensors:  # absent from states saved before augmentation existed (none augmented)
            self.augment_generator.set_state(tensors["rng.augment"])
        self.epoch = int(meta["epoch"])
        self.history = [EpochMetrics(**m) for m in meta["history"]]
        self.best_epoch = meta.get("best_epoch")

    # -- running ----------------------------------------------------------------------------------
    def run(
        self,
        on_epoch: Callable[[EpochMetrics], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Trains the remaining epochs; returns the model with the selected weights loaded."""
        spec = self.spec
        spent = sum(m.seconds for m in self.history)
        started = time.monotonic()
        deadline = started + spec.max_seconds - spent if spec.max_seconds is not None else math.inf
        stopped_early = self._patience_exhausted()
        while self.epoch < spec.epochs and not stopped_early:
            epoch_started = time.perf_counter()
            loss_sum, correct = self._train_epoch(should_stop, deadline)
            val_acc = None
            if self.val_index is not None:
                val_acc = evaluate(self.model, self.data.train_x[self.val_index], self.data.train_y[self.val_index])
            test_acc = evaluate(self.model, self.data.test_x, self.data.test_y)
            self.epoch += 1
            metrics = EpochMetrics(
                epoch=self.epoch,
                train_loss=loss_sum / self.n_train,
                train_acc=correct / self.n_train,
                val_acc=val_acc,
                test_acc=test_acc,
                lr=lr_at(spec, self.epoch * self.steps_per_epoch - 1, self.steps_per_epoch),
                seconds=time.perf_counter() - epoch_started,
            )
            self.history.append(metrics)
            if val_acc is not None and (self.best_epoch is None or val_acc > self.history[self.best_epoch - 1].val_acc):  # type: ignore[operator]
                self.best_epoch = self.epoch
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if on_epoch is not None:
                on_epoch(metrics)
            stopped_early = self._patience_exhausted()
            if time.monotonic() > deadline and self.epoch < spec.epochs and not stopped_early:
                raise TimeLimitExceeded.of(spec)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        return TrainResult(
            model=self.model, history=list(self.history), best_epoch=self.best_epoch, stopped_early=stopped_early
        )

    def _patience_exhausted(self) -> bool:
        patience = self.spec.early_stopping_patience
        return patience is not None and self.best_epoch is not None and self.epoch - self.best_epoch >= patience

    def _train_epoch(self, should_stop: Callable[[], bool] | None, deadline: float) -> tuple[float, int]:
        order = torch.randperm(self.n_train, device=self.device, generator=self.shuffle)
        if self.train_index is not None:
            order = self.train_index[order]
        first_step = self.epoch * self.steps_per_epoch
        if self.static_step:
            if self._graph_step is None:
                self._graph_step = _GraphStep(self, capture=self.use_graphs)
            return self._graph_step.run_epoch(order, first_step, should_stop, deadline)
        return self._eager_epoch(order, first_step, should_stop, deadline)

    def _check(self, should_stop: Callable[[], bool] | None, deadline: float) -> None:
        if should_stop is not None and should_stop():
            raise TrainingStopped(self.epoch)
        if time.monotonic() > deadline:
            raise TimeLimitExceeded.of(self.spec)

    def _eager_epoch(
        self, order: torch.Tensor, first_step: int, should_stop: Callable[[], bool] | None, deadline: float
    ) -> tuple[float, int]:
        spec, data, model, optimizer = self.spec, self.data, self.model, self.optimizer
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        constant_lr = spec.lr_schedule == "constant" and spec.warmup_epochs == 0
        for step in range(self.steps_per_epoch):
            self._check(should_stop, deadline)
            if not constant_lr:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(spec, first_step + step, self.steps_per_epoch)
            index = order[step * spec.batch_size : (step + 1) * spec.batch_size]
            inputs, labels = data.train_x[index], data.train_y[index]
            if self.augment:
                inputs = augment_batch(inputs, spec, self.augment_generator)
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=spec.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: a .item() per step would synchronise a GPU every step.
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(dim=1) == labels).sum()
        return loss_sum.item(), int(correct.item())


class _GraphStep:
    """The training step captured as CUDA graphs: one for full batches, one for the last, shorter batch.

    Inputs are read from static buffers the epoch fills once (the shuffled order, the learning-rate
    table); a device-side step counter walks through them, so a step is one ``replay()``. Without
    ``capture`` the same step body runs eagerly (``step_mode="static"``).
    """

    def __init__(self, trainer: Trainer, capture: bool) -> None:
        self.trainer = trainer
        spec, device = trainer.spec, trainer.device
        self.batch = spec.batch_size
        self.full_steps = trainer.n_train // self.batch
        self.tail = trainer.n_train - self.full_steps * self.batch
        self.order = torch.zeros(trainer.n_train, dtype=torch.int64, device=device)
        # Row k holds full batch k's indices: a view of ``order``, so filling ``order`` fills it.
        self.batches = self.order[: self.full_steps * self.batch].view(self.full_steps, self.batch)
        # Constant learning rate: the tensor keeps spec.lr and no step copies it (one kernel fewer per step).
        self.varying_lr = spec.lr_schedule != "constant" or spec.warmup_epochs > 0
        self.lr_table = torch.zeros(trainer.steps_per_epoch, device=device)
        self.counter = torch.zeros((), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.capture = capture
        self.graphs: list[tuple[torch.cuda.CUDAGraph, int, int]] = []
        if capture:
            self._capture()
        else:
            self._load_optimizer_state(trainer._pending_optimizer_state)

    def _body(self, size: int, offset_base: int) -> None:
        trainer, spec = self.trainer, self.trainer.spec
        assert trainer.lr_tensor is not None
        # Few kernels around the model's own: on a small MLP each one costs about as much as a matmul.
        if size == self.batch:
            index = self.batches.index_select(0, self.counter.view(1)).view(-1)
        else:
            index = self.order[offset_base:]
        if self.varying_lr:
            trainer.lr_tensor.copy_(self.lr_table.index_select(0, self.counter.view(1)).view(()))
        inputs = trainer.data.train_x.index_select(0, index)
        labels = trainer.data.train_y.index_select(0, index)
        if trainer.augment:
            inputs = augment_batch(inputs, spec, trainer.augment_generator)
        logits = trainer.model(inputs)
        loss = F.cross_entropy(logits, labels, label_smoothing=spec.label_smoothing)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        self.loss_sum.add_(loss.detach(), alpha=size)
        self.correct.add_((logits.argmax(dim=1) == labels).sum())
        self.counter.add_(1)

    def _sizes(self) -> list[tuple[int, int]]:
        sizes = [(self.batch, 0)] if self.full_steps else []
        if self.tail:
            sizes.append((self.tail, self.full_steps * self.batch))
        return sizes

    def _load_optimizer_state(self, state: dict[str, Any] | None) -> None:
        trainer = self.trainer
        if state is not None:
            trainer.optimizer.load_state_dict(state)
        # load_state_dict deep-copies the groups: point them back at the one learning-rate tensor the step updates.
        for group in trainer.optimizer.param_groups:
            group["lr"] = trainer.lr_tensor
        trainer._pending_optimizer_state = None

    def _capture(self) -> None:
        trainer = self.trainer
        assert trainer.lr_tensor is not None
        trainer.model.train()
        # Warm up on a side stream (lazy cuBLAS and optimizer-state set-up) with lr 0, so the weights stay put.
        self.lr_table.zero_()
        trainer.lr_tensor.fill_(0.0)
        self.order.copy_(torch.arange(trainer.n_train, device=trainer.device))
        # The warm-up's draws must not shift the run's augmentation stream: same seed, same images.
        augment_state = trainer.augment_generator.get_state()
        side = torch.cuda.Stream(trainer.device)
        side.wait_stream(torch.cuda.current_stream(trainer.device))
        with torch.cuda.stream(side):
            for size, base in self._sizes():
                for _ in range(2):
                    self.counter.zero_()
                    self._body(size, base)
        torch.cuda.current_stream(trainer.device).wait_stream(side)
        trainer.augment_generator.set_state(augment_state)
        trainer.lr_tensor.fill_(trainer.spec.lr)
        # Forget the warm-up's optimizer state: zeros are what a fresh optimizer starts from.
        self._load_optimizer_state(trainer._pending_optimizer_state or _zeroed(trainer.optimizer.state_dict()))
        # Not torch.cuda.graph(): it synchronises the whole device and empties the cache on entry, which
        # would break a capture running in another worker slot. Captures take turns; "thread_local" lets the
        # other slots keep training on their own streams meanwhile.
        capture_stream = torch.cuda.Stream(trainer.device)
        with _CAPTURE_LOCK:
            for size, base in self._sizes():
                graph = torch.cuda.CUDAGraph()
                if trainer.dropouts:
                    graph.register_generator_state(trainer.dropout_generator)
                if trainer.augment:
                    graph.register_generator_state(trainer.augment_generator)
                capture_stream.wait_stream(torch.cuda.current_stream(trainer.device))
                with torch.cuda.stream(capture_stream):
                    graph.capture_begin(capture_error_mode="thread_local")
                    try:
                        self._body(size, base)
                    finally:
                        graph.capture_end()
                torch.cuda.current_stream(trainer.device).wait_stream(capture_stream)
                self.graphs.append((graph, size, base))

    def run_epoch(
        self, order: torch.Tensor, first_step: int, should_stop: Callable[[], bool] | None, deadline: float
    ) -> tuple[float, int]:
        trainer = self.trainer
        trainer.model.train()
        self.order.copy_(order)
        table = [lr_at(trainer.spec, first_step + s, trainer.steps_per_epoch) for s in range(trainer.steps_per_epoch)]
        self.lr_table.copy_(torch.tensor(table, dtype=torch.float32), non_blocking=False)
        self.counter.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()
        for size, base in self._sizes():
            graph = next((g for g, s, _ in self.graphs if s == size), None)
            for _ in range(self.full_steps if size == self.batch else 1):
                trainer._check(should_stop, deadline)
                if graph is not None:
                    graph.replay()
                else:
                    self._body(size, base)
        return self.loss_sum.item(), int(self.correct.item())


def _zeroed(state_dict: dict[str, Any]) -> dict[str, Any]:
    fresh = copy.deepcopy(state_dict)
    for values in fresh["state"].values():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value.zero_()
            elif name == "step":
                values[name] = 0.0
    return fresh


def train(
    spec: TrainingSpec,
    data: DeviceDataset,
    *,
    seed: int,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cuda_graphs: bool | None = None,
) -> TrainResult:
    """Trains the spec's MLP on ``data`` from scratch; same seed and device give the same run."""
    return Trainer(spec, data, seed=seed, cuda_graphs=cuda_graphs).run(on_epoch=on_epoch, should_stop=should_stop)
