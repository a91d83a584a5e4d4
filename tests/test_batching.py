"""service/batching.py: concurrent requests share forward passes and get exactly their own rows."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from models.data import images_to_inputs
from models.network import build_mlp
from service.batching import MicroBatcher
from tests.specs import spec_of


@pytest.fixture
def batcher() -> Iterator[MicroBatcher]:
    # A generous wait so that requests started together surely meet in one batch.
    instance = MicroBatcher(max_batch=64, max_wait=0.2)
    yield instance
    instance.close()


def model(seed: int) -> nn.Module:
    return build_mlp(spec_of(hidden_layers=[8]), generator=torch.Generator().manual_seed(seed)).eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def direct(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(module(images_to_inputs(batch)), dim=1)


def run_concurrently(calls: list[tuple[str, nn.Module, torch.Tensor]], batcher: MicroBatcher) -> list[object]:
    results: list[object] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def call(index: int) -> None:
        start.wait()
        try:
            results[index] = batcher.probabilities(*calls[index])
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_requests_share_a_forward_pass_and_get_their_own_rows(batcher: MicroBatcher) -> None:
    module = model(0)
    calls = [("m", module, images(1 + i % 3, seed=i)) for i in range(8)]
    results = run_concurrently(calls, batcher)
    for (_, _, batch), result in zip(calls, results, strict=True):
        assert isinstance(result, torch.Tensor)
        assert torch.allclose(result, direct(module, batch), atol=1e-6)
    assert max(batcher.batch_sizes) > 3, batcher.batch_sizes
    assert sum(size * count for size, count in batcher.batch_sizes.items()) == sum(len(c[2]) for c in calls)


def test_requests_for_different_models_are_not_mixed(batcher: MicroBatcher) -> None:
    first, second = model(1), model(2)
    calls = [("a" if i % 2 else "b", first if i % 2 else second, images(2, seed=i)) for i in range(6)]
    for (_, module, batch), result in zip(calls, run_concurrently(calls, batcher), strict=True):
        assert isinstance(result, torch.Tensor) and torch.allclose(result, direct(module, batch), atol=1e-6)


def test_a_failing_forward_pass_fails_its_requests_and_the_batcher_goes_on(batcher: MicroBatcher) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("weights on fire")

    results = run_concurrently([("broken", Broken(), images(1, seed=i)) for i in range(3)], batcher)
    assert all(isinstance(r, RuntimeError) and "on fire" in str(r) for r in results)
    healthy = model(3)
    batch = images(2, seed=9)
    assert torch.allclose(batcher.probabilities("ok", healthy, batch), direct(healthy, batch), atol=1e-6)


def test_without_a_wait_a_lone_request_goes_at_once() -> None:
    eager = MicroBatcher(max_batch=64, max_wait=0.0)
    try:
        module, batch = model(4), images(3, seed=1)
        assert torch.allclose(eager.probabilities("m", module, batch), direct(module, batch), atol=1e-6)
        assert eager.batch_sizes == {3: 1}
    finally:
        eager.close()
