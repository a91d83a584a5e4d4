"""models/training.py's static step (what CUDA graphs capture) against the eager loop.

On the CPU the static step runs uncaptured, which checks its buffers, step counter and learning-rate
table; on a GPU (tests marked gpu) the captured graphs are checked the same way.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data import DeviceDataset, load_fashion_mnist, to_device
from models.spec import TrainingSpec
from models.training import EpochMetrics, Trainer, TrainingStopped
from tests.support.specs import spec_of

SPECS = [
    spec_of(hidden_layers=[16], batch_size=64, epochs=3),
    spec_of(
        hidden_layers=[16],
        batch_size=64,
        epochs=3,
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.01,
        lr_schedule="onecycle",
        warmup_epochs=1,
        val_fraction=0.2,
    ),
    spec_of(
        hidden_layers=[16, 8],
        batch_size=100,
        epochs=3,
        momentum=0.9,
        nesterov=True,
        lr=0.05,
        lr_schedule="step",
        step_epochs=1,
        gamma=0.5,
        label_smoothing=0.1,
        normalize_inputs=True,
    ),
    spec_of(hidden_layers=[32], batch_size=600, epochs=2, optimizer="adam", lr=0.01, lr_schedule="cosine"),
]


def comparable(history: list[EpochMetrics]) -> list[tuple[Any, ...]]:
    return [(m.epoch, m.train_loss, m.train_acc, m.val_acc, m.test_acc, m.lr) for m in history]


def assert_close_runs(a: Any, b: Any, atol: float) -> None:
    assert len(a.history) == len(b.history)
    for x, y in zip(a.history, b.history, strict=True):
        assert x.epoch == y.epoch and x.lr == pytest.approx(y.lr)
        assert x.train_loss == pytest.approx(y.train_loss, abs=atol)
        assert x.test_acc == pytest.approx(y.test_acc, abs=0.02)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=atol), (p - q).abs().max()


@pytest.mark.parametrize("spec", SPECS, ids=["sgd", "adamw-onecycle-val", "nesterov-step-smooth-norm", "adam-tail"])
def test_static_step_matches_eager_on_cpu(synthetic_dataset: DeviceDataset, spec: TrainingSpec) -> None:
    eager = Trainer(spec, synthetic_dataset, seed=3, step_mode="eager").run()
    static = Trainer(spec, synthetic_dataset, seed=3, step_mode="static").run()
    assert_close_runs(eager, static, atol=1e-5)


def test_static_step_augments_as_the_eager_loop_does_on_cpu(synthetic_dataset: DeviceDataset) -> None:
    spec = spec_of(hidden_layers=[16], batch_size=64, epochs=2, hflip=True, max_shift=2, dropout=0.2)
    eager = Trainer(spec, synthetic_dataset, seed=3, step_mode="eager").run()
    static = Trainer(spec, synthetic_dataset, seed=3, step_mode="static").run()
    assert_close_runs(eager, static, atol=1e-5)
    plain = Trainer(spec.model_copy(update={"hflip": False, "max_shift": 0}), synthetic_dataset, seed=3).run()
    assert plain.history[0].train_loss != pytest.approx(eager.history[0].train_loss, abs=1e-4)


def test_graph_mode_needs_cuda(synthetic_dataset: DeviceDataset) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="CUDA"):
        Trainer(SPECS[0], synthetic_dataset, seed=0, step_mode="graph")
    assert Trainer(SPECS[0], synthetic_dataset, seed=0).step_mode == "eager"


def _interrupted_then_resumed(spec: TrainingSpec, data: DeviceDataset, mode: str, stop_after: int) -> Any:
    first = Trainer(spec, data, seed=7, step_mode=mode)  # type: ignore[arg-type]
    saved: dict[str, Any] = {}

    def on_epoch(metrics: EpochMetrics) -> None:
        if metrics.epoch == stop_after:
            tensors, meta = first.state()
            saved["state"] = ({k: v.clone() for k, v in tensors.items()}, copy.deepcopy(meta))

    with pytest.raises(TrainingStopped):
        first.run(on_epoch=on_epoch, should_stop=lambda: first.epoch >= stop_after)
    second = Trainer(spec, data, seed=7, step_mode=mode)  # type: ignore[arg-type]
    second.restore(*saved["state"])
    return second.run()


def test_static_step_resumes_exactly_on_cpu(synthetic_dataset: DeviceDataset) -> None:
    spec = SPECS[1].model_copy(update={"epochs": 4})
    whole = Trainer(spec, synthetic_dataset, seed=7, step_mode="static").run()
    resumed = _interrupted_then_resumed(spec, synthetic_dataset, "static", stop_after=2)
    assert comparable(resumed.history) == comparable(whole.history)
    for p, q in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


# -- on a GPU -------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_dataset(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DeviceDataset:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return to_device(load_fashion_mnist(synthetic_data_dir, tmp_path_factory.mktemp("cache")), torch.device("cuda"))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec", SPECS, ids=["sgd", "adamw-onecycle-val", "nesterov-step-smooth-norm", "adam-tail"])
def test_cuda_graphs_match_eager(cuda_dataset: DeviceDataset, spec: TrainingSpec) -> None:
    eager = Trainer(spec, cuda_dataset, seed=3, step_mode="eager").run()
    graph = Trainer(spec, cuda_dataset, seed=3, step_mode="graph").run()
    assert_close_runs(eager, graph, atol=1e-4)


@pytest.mark.gpu
@gpu
def test_cuda_graphs_are_the_default_on_cuda_and_deterministic(cuda_dataset: DeviceDataset) -> None:
    first = Trainer(SPECS[1], cuda_dataset, seed=11)
    assert first.step_mode == "graph"
    a, b = first.run(), Trainer(SPECS[1], cuda_dataset, seed=11).run()
    assert comparable(a.history) == comparable(b.history)


@pytest.mark.gpu
@gpu
def test_cuda_graphs_resume_exactly(cuda_dataset: DeviceDataset) -> None:
    spec = SPECS[2].model_copy(update={"epochs": 4})
    whole = Trainer(spec, cuda_dataset, seed=7, step_mode="graph").run()
    resumed = _interrupted_then_resumed(spec, cuda_dataset, "graph", stop_after=2)
    assert comparable(resumed.history) == comparable(whole.history)


@pytest.mark.gpu
@gpu
def test_cuda_graphs_with_dropout_learn(cuda_dataset: DeviceDataset) -> None:
    spec = spec_of(hidden_layers=[64], dropout=0.3, batch_size=64, epochs=5, optimizer="adam", lr=0.003)
    result = Trainer(spec, cuda_dataset, seed=1, step_mode="graph").run()
    assert result.history[-1].train_loss < result.history[0].train_loss and result.test_acc is not None
    assert result.test_acc > 0.8


@pytest.mark.gpu
@gpu
def test_cuda_graphs_with_augmentation_learn_and_repeat_and_resume(cuda_dataset: DeviceDataset) -> None:
    """The augmentation stream registered with the graph: replays draw fresh flips and shifts each step,
    the same ones for the same seed, and a resumed run draws what the whole run drew."""
    spec = spec_of(
        hidden_layers=[64], batch_size=64, epochs=4, optimizer="adam", lr=0.003, hflip=True, max_shift=2, dropout=0.1
    )
    first = Trainer(spec, cuda_dataset, seed=2, step_mode="graph").run()
    again = Trainer(spec, cuda_dataset, seed=2, step_mode="graph").run()
    assert comparable(first.history) == comparable(again.history)
    assert first.history[-1].train_loss < first.history[0].train_loss and first.test_acc is not None
    assert first.test_acc > 0.8
    resumed = _interrupted_then_resumed(spec, cuda_dataset, "graph", stop_after=2)
    assert comparable(resumed.history) == comparable(
        Trainer(spec, cuda_dataset, seed=7, step_mode="graph").run().history
    )


@pytest.mark.gpu
@gpu
def test_concurrent_graph_runs_on_their_own_streams_match_sequential(cuda_dataset: DeviceDataset) -> None:
    specs = [SPECS[0], SPECS[1], SPECS[3]]
    sequential = [comparable(Trainer(spec, cuda_dataset, seed=5).run().history) for spec in specs]
    results: list[Any] = [None] * len(specs)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                results[index] = comparable(Trainer(specs[index], cuda_dataset, seed=5).run().history)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(specs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    assert results == sequential
