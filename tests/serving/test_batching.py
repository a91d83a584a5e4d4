"""service/serving/batching.py: concurrent submissions are processed together and each gets exactly its own answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from models.data import images_to_inputs
from models.network import build_mlp
from service.errors import PredictQueueFull
from service.serving import batching
from service.serving.batching import MicroBatcher
from tests.support.specs import spec_of

Item = tuple[nn.Module, torch.Tensor]


def model(seed: int) -> nn.Module:
    return build_mlp(spec_of(hidden_layers=[8]), generator=torch.Generator().manual_seed(seed)).eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def direct(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(module(images_to_inputs(batch)), dim=1)


def forward_by_model(items: list[Item]) -> list[torch.Tensor | BaseException]:
    """A real batched forward pass: one per distinct module, rows handed back per item."""
    answers: list[torch.Tensor | BaseException] = [torch.empty(0)] * len(items)
    by_module: dict[int, list[int]] = {}
    for index, (module, _) in enumerate(items):
        by_module.setdefault(id(module), []).append(index)
    for indices in by_module.values():
        module = items[indices[0]][0]
        try:
            rows = direct(module, torch.cat([items[i][1] for i in indices]))
        except Exception as exc:
            for i in indices:
                answers[i] = exc
            continue
        start = 0
        for i in indices:
            answers[i] = rows[start : start + len(items[i][1])]
            start += len(items[i][1])
    return answers


class Hold:
    """An item whose batch holds the batching thread until released: whatever is submitted meanwhile
    queues up, and the next batch surely takes it all together."""

    def __init__(self) -> None:
        self.release = threading.Event()


def holding(process: Callable[[list[Any]], list[Any]]) -> Callable[[list[Any]], list[Any]]:
    def run(items: list[Any]) -> list[Any]:
        if len(items) == 1 and isinstance(items[0], Hold):
            items[0].release.wait(timeout=10)
            return [None]
        return process(items)

    return run


async def together(batcher: MicroBatcher[Any, Any], items: list[Any]) -> list[object]:
    """Submits ``items`` while the batching thread is held, then lets it go: they meet in one batch."""
    hold = Hold()
    held = asyncio.ensure_future(batcher.submit(hold))
    await asyncio.sleep(0.05)  # the thread is now inside the hold's batch
    submitted = [asyncio.ensure_future(batcher.submit(item)) for item in items]
    await asyncio.sleep(0.05)  # every submission is queued
    hold.release.set()
    await held
    return await asyncio.gather(*submitted, return_exceptions=True)


def weight(item: Any) -> int:
    return 1 if isinstance(item, Hold) else len(item[1])


@pytest.fixture
def batcher() -> Iterator[MicroBatcher[Any, Any]]:
    instance: MicroBatcher[Any, Any] = MicroBatcher(
        holding(forward_by_model), max_batch=64, max_wait=0.0, weight=weight
    )
    yield instance
    instance.close()


async def gather(batcher: MicroBatcher[Any, Any], items: list[Item]) -> list[object]:
    return await together(batcher, items)


def test_concurrent_submissions_share_a_forward_pass_and_get_their_own_rows(
    batcher: MicroBatcher[Item, torch.Tensor],
) -> None:
    module = model(0)
    items = [(module, images(1 + i % 3, seed=i)) for i in range(8)]
    results = asyncio.run(gather(batcher, items))
    for (_, batch), result in zip(items, results, strict=True):
        assert isinstance(result, torch.Tensor)
        assert torch.allclose(result, direct(module, batch), atol=1e-6)
    # The hold's batch (1), then all eight submissions in one forward pass.
    assert batcher.batch_sizes == {1: 1, sum(len(b) for _, b in items): 1}, batcher.batch_sizes


def test_a_batch_never_takes_more_than_max_batch_images() -> None:
    seen: list[int] = []

    def record(items: list[int]) -> list[int]:
        seen.append(sum(items))
        return items

    small: MicroBatcher[Any, Any] = MicroBatcher(
        holding(record), max_batch=10, max_wait=0.0, weight=lambda n: 1 if isinstance(n, Hold) else n
    )
    try:
        assert asyncio.run(together(small, [4, 4, 4, 4, 12, 1])) == [4, 4, 4, 4, 12, 1]
    finally:
        small.close()
    # In arrival order, never past 10; the 12 is over the limit on its own and goes alone.
    assert seen == [8, 8, 12, 1]


def test_models_are_not_mixed(batcher: MicroBatcher[Item, torch.Tensor]) -> None:
    first, second = model(1), model(2)
    items = [(first if i % 2 else second, images(2, seed=i)) for i in range(6)]
    for (module, batch), result in zip(items, asyncio.run(gather(batcher, items)), strict=True):
        assert isinstance(result, torch.Tensor) and torch.allclose(result, direct(module, batch), atol=1e-6)


def test_a_failure_reaches_only_its_own_callers_and_the_batcher_goes_on(
    batcher: MicroBatcher[Item, torch.Tensor],
) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("weights on fire")

    healthy, broken = model(3), Broken()
    items = [(broken if i % 2 else healthy, images(1, seed=i)) for i in range(6)]
    results = asyncio.run(gather(batcher, items))
    for (module, batch), result in zip(items, results, strict=True):
        if module is broken:
            assert isinstance(result, RuntimeError) and "on fire" in str(result)
        else:
            assert isinstance(result, torch.Tensor) and torch.allclose(result, direct(healthy, batch), atol=1e-6)


def test_a_process_that_raises_fails_the_whole_batch_and_the_thread_lives_on() -> None:
    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first batch breaks")
        return [n * 2 for n in items]

    instance: MicroBatcher[int, int] = MicroBatcher(flaky, max_batch=8, max_wait=0.0)
    try:

        async def main() -> tuple[BaseException | int, int]:
            first = await asyncio.gather(instance.submit(1), return_exceptions=True)
            return first[0], await instance.submit(21)

        failed, answer = asyncio.run(main())
        assert isinstance(failed, ValueError) and "first batch" in str(failed)
        assert answer == 42
    finally:
        instance.close()


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(timeout=10)
        return items

    instance: MicroBatcher[int, int] = MicroBatcher(slow, max_batch=8, max_wait=0.0)
    try:

        async def main() -> int:
            doomed = asyncio.ensure_future(instance.submit(1))
            await asyncio.sleep(0.05)
            doomed.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            return await instance.submit(7)

        assert asyncio.run(main()) == 7
    finally:
        instance.close()


def test_callers_on_different_event_loops_each_get_their_own_answer() -> None:
    instance: MicroBatcher[int, int] = MicroBatcher(lambda items: [n + 1 for n in items], max_batch=64, max_wait=0.0)
    answers: dict[int, list[int]] = {}

    def run_loop(offset: int) -> None:
        async def main() -> list[int]:
            return await asyncio.gather(*(instance.submit(offset + n) for n in range(5)))

        answers[offset] = asyncio.run(main())

    try:
        threads = [threading.Thread(target=run_loop, args=(offset,)) for offset in (0, 100, 200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        instance.close()
    assert answers == {offset: [offset + n + 1 for n in range(5)] for offset in (0, 100, 200)}


def test_without_a_wait_a_lone_submission_goes_at_once() -> None:
    eager: MicroBatcher[Item, torch.Tensor] = MicroBatcher(
        forward_by_model, max_batch=64, max_wait=0.0, weight=lambda item: len(item[1])
    )
    try:
        module, batch = model(4), images(3, seed=1)
        assert torch.allclose(asyncio.run(eager.submit((module, batch))), direct(module, batch), atol=1e-6)
        assert eager.batch_sizes == {3: 1}
    finally:
        eager.close()


def test_a_batch_waits_for_more_only_while_requests_arrive_together() -> None:
    instance: MicroBatcher[Any, Any] = MicroBatcher(
        holding(lambda items: items), max_batch=64, max_wait=1.0, weight=lambda _: 1
    )

    async def timed(item: int) -> float:
        start = time.monotonic()
        await instance.submit(item)
        return time.monotonic() - start

    try:
        # Idle: a lone request goes at once, however long the configured wait.
        assert asyncio.run(timed(1)) < 0.5
        # After a batch of several, the next batch waits up to max_wait for company.
        assert asyncio.run(together(instance, [1, 2, 3])) == [1, 2, 3]
        assert asyncio.run(timed(4)) >= 0.9
        # That batch went alone: the server is idle again, and the wait is off.
        assert asyncio.run(timed(5)) < 0.5
    finally:
        instance.close()


# -- the bounded queue ----------------------------------------------------------------------------------


class Readmitted(int):
    """An item admitted before, which the batcher takes whatever the queue holds (as the predictor's deferred
    requests coming back with their model loaded)."""


def bounded_batcher(max_queue: int) -> MicroBatcher[Any, Any]:
    """Items are ints of that weight (or a Hold, of weight 1); each one's answer is itself."""
    return MicroBatcher(
        holding(lambda items: items),
        max_batch=1024,
        max_wait=0.0,
        weight=lambda item: 1 if isinstance(item, Hold) else int(item),
        max_queue=max_queue,
        readmit=lambda item: isinstance(item, Readmitted),
    )


@pytest.fixture
def bounded() -> Iterator[MicroBatcher[Any, Any]]:
    instance = bounded_batcher(max_queue=4)
    yield instance
    instance.close()


async def hold_thread(batcher: MicroBatcher[Any, Any]) -> tuple[Hold, asyncio.Future[object]]:
    """Puts the batching thread inside a batch of its own until the hold is released."""
    hold = Hold()
    held = asyncio.ensure_future(batcher.submit(hold))
    await asyncio.sleep(0.05)
    assert batcher.waiting == 0  # taken into its batch: no longer waiting, though not answered yet
    return hold, held


def test_a_full_queue_refuses_at_once_and_admits_again_once_drained(bounded: MicroBatcher[Any, Any]) -> None:
    async def main() -> None:
        hold, held = await hold_thread(bounded)
        admitted = [asyncio.ensure_future(bounded.submit(n)) for n in (1, 1, 1, 2)]
        await asyncio.sleep(0.01)  # each one admitted, waiting
        assert bounded.waiting == 5  # the 2 came with room left (3 of 4) and was taken whole
        assert bounded.full
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(PredictQueueFull) as refused:
                await bounded.submit(1)
            assert time.monotonic() - started < 0.05  # at once, not after the held batch
        with pytest.raises(PredictQueueFull):
            bounded.refuse_if_full()  # the check a caller makes before reading a body: counted as shed too
        assert bounded.shed == 3 and bounded.waiting == 5
        error = refused.value
        assert (error.status, error.code, error.headers()) == (503, "predict_queue_full", {"Retry-After": "1"})
        assert "5 images are already waiting" in str(error) and "FMNIST_PREDICT_MAX_QUEUE" in str(error)

        hold.release.set()
        await held
        assert await asyncio.gather(*admitted) == [1, 1, 1, 2]
        assert bounded.waiting == 0 and not bounded.full
        bounded.refuse_if_full()  # drained: no longer raises
        assert await asyncio.gather(*(bounded.submit(1) for _ in range(4))) == [1, 1, 1, 1]  # drained: room again
        assert bounded.shed == 3

    asyncio.run(main())


def test_an_item_admitted_before_is_taken_back_past_the_bound(bounded: MicroBatcher[Any, Any]) -> None:
    async def main() -> list[object]:
        hold, held = await hold_thread(bounded)
        admitted = [asyncio.ensure_future(bounded.submit(4))]
        await asyncio.sleep(0.01)
        with pytest.raises(PredictQueueFull):
            await bounded.submit(1)
        admitted.append(asyncio.ensure_future(bounded.submit(Readmitted(3))))
        await asyncio.sleep(0.01)
        assert bounded.waiting == 7 and bounded.shed == 1
        hold.release.set()
        await held
        return await asyncio.gather(*admitted)

    assert asyncio.run(main()) == [4, 3]
    assert bounded.waiting == 0


def test_the_bound_is_exact_under_concurrent_submitters_on_many_event_loops() -> None:
    """Eight threads, each with its event loop, submit 40 items at the same moment while the batching thread
    is held: exactly ``max_queue`` are admitted, and every other one is refused and counted."""
    instance = bounded_batcher(max_queue=100)
    start = threading.Barrier(8)
    outcomes: list[object] = []
    lock = threading.Lock()

    def submitter() -> None:
        async def main() -> list[object]:
            start.wait(timeout=10)
            return await asyncio.gather(*(instance.submit(1) for _ in range(40)), return_exceptions=True)

        results = asyncio.run(main())
        with lock:
            outcomes.extend(results)

    async def hold_and_wait() -> Hold:
        hold, _held = await hold_thread(instance)
        return hold

    try:
        hold = asyncio.run(hold_and_wait())  # the held batch's answer goes to a closed loop: nobody waits
        threads = [threading.Thread(target=submitter) for _ in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while instance.waiting + instance.shed < 320 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert instance.waiting == 100 and instance.shed == 220
        hold.release.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        instance.close()
    assert outcomes.count(1) == 100
    refused = [outcome for outcome in outcomes if isinstance(outcome, PredictQueueFull)]
    assert len(refused) == 220 and len(outcomes) == 320
    assert instance.waiting == 0


# -- small batches on the event loop (loop_max) -------------------------------------------------------------------


def recording(log: list[tuple[str, list[Any]]]) -> Callable[[list[Any]], list[Any]]:
    """A process that answers n + 1 and records which thread ran each batch."""

    def run(items: list[Any]) -> list[Any]:
        log.append((threading.current_thread().name, list(items)))
        return [n + 1 for n in items]

    return run


def test_a_small_batch_is_processed_on_the_event_loop_when_the_thread_is_idle() -> None:
    log: list[tuple[str, list[Any]]] = []
    instance: MicroBatcher[int, int] = MicroBatcher(recording(log), max_batch=64, max_wait=0.0, loop_max=4)
    loop_thread = threading.current_thread().name

    async def main() -> tuple[list[int], list[int]]:
        small = await asyncio.gather(*(instance.submit(n) for n in range(4)))  # one turn: one batch of 4
        large = await asyncio.gather(*(instance.submit(n) for n in range(5)))  # past loop_max: the thread's
        return small, large

    try:
        small, large = asyncio.run(main())
    finally:
        instance.close()
    assert (small, large) == ([1, 2, 3, 4], [1, 2, 3, 4, 5])
    assert log == [(loop_thread, [0, 1, 2, 3]), ("micro-batcher", [0, 1, 2, 3, 4])]
    assert instance.batch_sizes == {4: 1, 5: 1} and instance.waiting == 0


def test_while_the_thread_holds_a_batch_small_ones_queue_behind_it_in_order() -> None:
    log: list[tuple[str, list[Any]]] = []
    release = threading.Event()
    record = recording(log)

    def blocking(items: list[Any]) -> list[Any]:
        if -1 in items:  # this batch holds the thread until the test releases it
            release.wait(timeout=10)
        return record(items)

    instance: MicroBatcher[int, int] = MicroBatcher(blocking, max_batch=64, max_wait=0.0, loop_max=4)

    async def scenario() -> tuple[list[int], list[int]]:
        first = asyncio.gather(*(instance.submit(n) for n in (-1, 0, 1, 2, 3)))  # 5 > loop_max: the thread's
        await asyncio.sleep(0.05)  # the thread is inside that batch, held
        assert instance.waiting == 0
        small = asyncio.ensure_future(asyncio.gather(instance.submit(10), instance.submit(11)))
        await asyncio.sleep(0.05)
        assert not small.done()  # not run on the loop ahead of the held batch: it waits its turn
        release.set()
        return list(await first), await small

    try:
        first, small = asyncio.run(scenario())
    finally:
        release.set()
        instance.close()
    assert first == [0, 1, 2, 3, 4] and small == [11, 12]
    assert log == [("micro-batcher", [-1, 0, 1, 2, 3]), ("micro-batcher", [10, 11])]


def test_a_batch_that_fails_on_the_event_loop_fails_its_callers_and_the_next_one_is_served() -> None:
    def flaky(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("thirteen")
        return [n + 1 for n in items]

    instance: MicroBatcher[int, int] = MicroBatcher(flaky, max_batch=8, max_wait=0.0, loop_max=8)

    async def main() -> tuple[list[object], list[int]]:
        failed = await asyncio.gather(instance.submit(13), instance.submit(1), return_exceptions=True)
        return failed, await asyncio.gather(instance.submit(2), instance.submit(3))

    try:
        failed, served = asyncio.run(main())
    finally:
        instance.close()
    assert [type(outcome) for outcome in failed] == [ValueError, ValueError]
    assert served == [3, 4] and instance.waiting == 0


def test_a_batch_that_holds_the_loop_too_long_sends_the_next_ones_to_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "LOOP_BUDGET", 0.01)
    log: list[tuple[str, list[Any]]] = []
    record = recording(log)

    def slow_first(items: list[int]) -> list[int]:
        if not log:
            time.sleep(0.03)  # a stalled database, say
        return record(items)

    instance: MicroBatcher[int, int] = MicroBatcher(slow_first, max_batch=8, max_wait=0.0, loop_max=8)
    loop_thread = threading.current_thread().name

    async def main() -> None:
        for n in range(3):
            assert await instance.submit(n) == n + 1

    try:
        asyncio.run(main())
    finally:
        instance.close()
    assert [thread for thread, _ in log] == [loop_thread, "micro-batcher", "micro-batcher"]
