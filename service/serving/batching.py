"""Micro-batching: concurrent requests are handled together, one batch at a time, by one thread.

Coroutines hand their items to the batching thread and await the answer without holding a thread of
their own. The thread takes everything queued at that moment, up to ``max_batch`` by weight, processes
the batch in one call, and hands the answers back to each event loop in a single callback: a batch of
thirty requests costs two thread hand-offs instead of sixty.

Under light load a request goes through alone, with no added wait. Once requests arrive together (the
last batch held more than one), a batch also waits up to ``max_wait`` for more to join: fewer, fuller
batches cost less per request, which is what a busy server needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Answer = TypeVar("Answer")


@dataclass(eq=False)
class _Pending(Generic[Item, Answer]):
    item: Item
    weight: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Answer]


def _one(_item: object) -> int:
    return 1


class MicroBatcher(Generic[Item, Answer]):
    """Runs ``process`` over batches of submitted items in a thread of its own.

    ``process`` gets the items of one batch in arrival order and returns one outcome per item; an
    exception it raises fails the whole batch, and the thread goes on with the next.
    """

    def __init__(
        self,
        process: Callable[[list[Item]], Sequence[Answer | BaseException]],
        *,
        max_batch: int,
        max_wait: float,
        weight: Callable[[Item], int] = _one,
        name: str = "micro-batcher",
    ) -> None:
        self.process, self.weight = process, weight
        self.max_batch, self.max_wait = max_batch, max_wait
        self.batch_sizes: Counter[int] = Counter()  # total weight per batch, for metrics and tests
        self._queue: queue.SimpleQueue[_Pending[Item, Answer] | None] = queue.SimpleQueue()
        self._carried: _Pending[Item, Answer] | None = None  # the batching thread's: first of the next batch
        self._busy = False  # the batching thread's: did the last batch hold more than one item?
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, item: Item) -> Answer:
        """``item``'s answer, processed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        pending = _Pending(item, self.weight(item), loop, loop.create_future())
        self._queue.put(pending)
        return await pending.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first: _Pending[Item, Answer]) -> list[_Pending[Item, Answer]]:
        batch, size = [first], first.weight
        deadline = time.monotonic() + (self.max_wait if self._busy else 0.0)
        while size < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                pending = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            if size + pending.weight > self.max_batch:
                self._carried = pending  # too big to join: it starts the next batch
                break
            batch.append(pending)
            size += pending.weight
        return batch

    def _run(self) -> None:
        while True:
            first, self._carried = self._carried or self._queue.get(), None
            if first is None:
                return
            batch = self._collect(first)
            self._busy = len(batch) > 1
            self.batch_sizes[sum(pending.weight for pending in batch)] += 1
            try:
                outcomes = list(self.process([pending.item for pending in batch]))
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
            except Exception as exc:  # every waiting caller learns of it; the thread lives on
                log.exception("processing a batch failed")
                outcomes = [exc] * len(batch)
            by_loop: defaultdict[
                asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Answer], Answer | BaseException]]
            ] = defaultdict(list)
            for pending, outcome in zip(batch, outcomes, strict=True):
                by_loop[pending.loop].append((pending.future, outcome))
            for loop, answers in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting there
                    loop.call_soon_threadsafe(_deliver, answers)


def _deliver(answers: list[tuple[asyncio.Future[Answer], Answer | BaseException]]) -> None:
    for future, outcome in answers:
        if future.done():  # cancelled: the client went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
