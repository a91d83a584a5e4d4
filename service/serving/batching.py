"""Micro-batching: concurrent requests are handled together, one batch at a time, by one thread.

Coroutines hand their items to the batching thread and await the answer without holding a thread of
their own. What the coroutines of one event loop submit in one turn of the loop goes to the thread
together, once that turn's callbacks have run: under load, that is every request whose body arrived in
the turn, batched with no wait at all. The thread takes everything queued at that moment, up to
``max_batch`` by weight, processes the batch in one call, and hands the answers back to each event loop
in a single callback: a batch of thirty requests costs two thread hand-offs instead of sixty.

Under light load a request goes through alone, with no added wait. With ``max_wait``, once requests
arrive together (the last batch held more than one) a batch also waits up to that long for more to join:
fewer, fuller batches cost less per request. With the turn-by-turn hand-off a short wait is enough (the
service's default, 0.5 ms, measured in the README).

With ``max_queue``, the queue is bounded: once that much weight (for predictions, images, as ``max_batch``
counts them) is waiting, a new submission is refused at once with ``PredictQueueFull`` rather than queued
behind work the server cannot finish in time. Images, not requests, because a request's wait is the images
ahead of it: 64 one-image requests and one request of 64 files cost the forward pass the same. Weight counts
from the submission until the batching thread takes it into a batch (not until it is answered): the bound is on
what waits, and a batch being processed is already at most ``max_batch``. The count is kept under a lock,
exact whatever the number of event loops submitting and the batching thread taking. A request admitted
once (``readmit``, for the predictor a request deferred while its model loaded) is never refused when it
comes back, so a bounded queue may briefly hold a little more than ``max_queue``; so may one request that
arrives with room left, as it is admitted whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.errors import PredictQueueFull

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


def _never(_item: object) -> bool:
    return False


# Retry-After for a refused submission: the waiting weight times the recent processing time per unit, within
# these bounds (seconds). A busy CPU server drains its queue well within a second: 1 is the usual answer.
RETRY_AFTER_BOUNDS = (1, 30)
# A batch processed on the event loop that takes longer than this (seconds) sends the batches of the next
# LOOP_COOLDOWN seconds to the batching thread (32 28x28 PNGs take about 3 ms: 0.1 ms each to decode).
LOOP_BUDGET = 0.02
LOOP_COOLDOWN = 10.0


class MicroBatcher(Generic[Item, Answer]):
    """Runs ``process`` over batches of submitted items in a thread of its own.

    ``process`` gets the items of one batch in arrival order and returns one outcome per item; an
    exception it raises fails the whole batch, and the thread goes on with the next. ``max_queue``: the most
    weight waiting before submissions are refused (None: unbounded); ``readmit``: whether an item was admitted
    before and must not be refused now; ``loop_max``: the most weight of a batch processed on the submitting
    event loop itself while the thread is idle (0: never; ``process`` must then be safe to call from both).
    """

    def __init__(
        self,
        process: Callable[[list[Item]], Sequence[Answer | BaseException]],
        *,
        max_batch: int,
        max_wait: float,
        weight: Callable[[Item], int] = _one,
        max_queue: int | None = None,
        readmit: Callable[[Item], bool] = _never,
        loop_max: int = 0,
        name: str = "micro-batcher",
    ) -> None:
        self.process, self.weight = process, weight
        self.max_batch, self.max_wait = max_batch, max_wait
        self.loop_max = loop_max
        self.max_queue, self.readmit = max_queue, readmit
        self.batch_sizes: Counter[int] = Counter()  # total weight per batch, for metrics and tests
        self.shed = 0  # submissions refused at the bound, for metrics; under _admission
        self._waiting = 0  # weight submitted and not yet taken into a batch; under _admission
        self._admission = threading.Lock()
        self._seconds_per_unit = 0.0  # the batching thread's moving average, for Retry-After
        # Each entry: what one event loop submitted in one turn, or None to stop.
        self._queue: queue.SimpleQueue[list[_Pending[Item, Answer]] | None] = queue.SimpleQueue()
        self._outboxes: dict[asyncio.AbstractEventLoop, list[_Pending[Item, Answer]]] = {}  # this turn's, by loop
        self._backlog: deque[_Pending[Item, Answer]] = deque()  # the batching thread's: taken, not yet batched
        self._stopping = False  # the batching thread's
        self._holding = False  # whether the batching thread holds items it has not answered yet
        self._processing = threading.Lock()  # held while a batch is processed, in the thread or on a loop
        self._loop_off_until = float("-inf")  # no batch on the event loop before this (time.monotonic())
        self._busy = False  # the batching thread's: did the last batch hold more than one item?
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, item: Item) -> Answer:
        """``item``'s answer, processed in a batch with whatever else is waiting. Raises ``PredictQueueFull``
        at once when the queue holds ``max_queue`` weight already (and ``item`` is not one to readmit)."""
        loop = asyncio.get_running_loop()
        pending = _Pending(item, self.weight(item), loop, loop.create_future())
        self._admit(pending)
        outbox = self._outboxes.get(loop)
        if outbox is None:
            self._outboxes[loop] = [pending]
            loop.call_soon(self._hand_off, loop)  # once this turn's callbacks have run
        else:
            outbox.append(pending)
        return await pending.future

    def _hand_off(self, loop: asyncio.AbstractEventLoop) -> None:
        outbox = self._outboxes.pop(loop)
        if not self._processed_on_loop(outbox):
            self._queue.put(outbox)

    def _processed_on_loop(self, batch: list[_Pending[Item, Answer]]) -> bool:
        """Processes ``batch`` here, on the event loop, when it weighs at most ``loop_max`` and the batching
        thread holds nothing: no thread hand-off either way, and no wait for the thread to wake. False (nothing
        done) otherwise: the thread takes it, behind what it already holds.

        A batch that holds the loop longer than ``LOOP_BUDGET`` (a stalled database, a slow disk) sends every
        batch to the thread for the next ``LOOP_COOLDOWN``: the loop keeps answering everything else."""
        if self._holding or sum(pending.weight for pending in batch) > self.loop_max:
            return False
        if time.monotonic() < self._loop_off_until or not self._processing.acquire(blocking=False):
            return False
        try:
            if self._holding or not self._queue.empty():
                return False
            started = time.monotonic()
            answers = self._process_batch(batch)
            took = time.monotonic() - started
            if took > LOOP_BUDGET:
                self._loop_off_until = time.monotonic() + LOOP_COOLDOWN
                log.warning(
                    "a batch held the event loop for %.0f ms; batches go to the batching thread for %.0f s",
                    took * 1000,
                    LOOP_COOLDOWN,
                )
            _deliver(answers)
        finally:
            self._processing.release()
        return True

    @property
    def waiting(self) -> int:
        """The weight submitted and not yet taken into a batch."""
        return self._waiting

    @property
    def full(self) -> bool:
        """Whether a new submission would be refused now: a caller may check it before reading a large body."""
        return self.max_queue is not None and self._waiting >= self.max_queue

    def refuse_if_full(self) -> None:
        """Raises ``PredictQueueFull`` (and counts it shed) when a new submission would be refused now: a caller
        checks it before reading a request's body, so a busy server refuses without doing that work."""
        with self._admission:
            self._refuse_when_full()

    def _admit(self, pending: _Pending[Item, Answer]) -> None:
        with self._admission:
            if not self.readmit(pending.item):
                self._refuse_when_full()
            self._waiting += pending.weight

    def _refuse_when_full(self) -> None:
        """Under ``_admission``: counts a refusal and raises ``PredictQueueFull`` when the queue is full."""
        if self.full:
            assert self.max_queue is not None  # only a bounded queue is ever full
            self.shed += 1
            raise PredictQueueFull(self.max_queue, self._waiting, self._retry_after(self._waiting))

    def _taken(self, batch: list[_Pending[Item, Answer]]) -> int:
        weight = sum(pending.weight for pending in batch)
        with self._admission:
            self._waiting -= weight
        return weight

    def _retry_after(self, waiting: int) -> int:
        low, high = RETRY_AFTER_BOUNDS
        return min(high, max(low, math.ceil(waiting * self._seconds_per_unit)))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _next(self, timeout: float | None) -> bool:
        """Moves the next hand-off into the backlog, waiting up to ``timeout`` (None: for ever); False when
        there is none, or the stop signal came."""
        if self._stopping:
            return False
        try:
            entry = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False
        if entry is None:
            self._stopping = True
            return False
        self._holding = True
        self._backlog.extend(entry)
        return True

    def _collect(self) -> list[_Pending[Item, Answer]]:
        """The next batch: its first item, then whatever is waiting (up to ``max_batch`` by weight); empty once
        the stop signal came and nothing is left."""
        if not self._backlog and not self._next(None):
            return []
        first = self._backlog.popleft()
        batch, size = [first], first.weight
        deadline = time.monotonic() + (self.max_wait if self._busy else 0.0)
        while size < self.max_batch:
            if not self._backlog:
                # A batch holding a full queue's weight waits for nobody: until it is taken, the rest are refused.
                timeout = deadline - time.monotonic() if self.max_queue is None or size < self.max_queue else 0.0
                if not self._next(timeout):
                    break
                continue
            if size + self._backlog[0].weight > self.max_batch:
                break  # too big to join: it starts the next batch
            pending = self._backlog.popleft()
            batch.append(pending)
            size += pending.weight
        return batch

    def _process_batch(
        self, batch: list[_Pending[Item, Answer]]
    ) -> list[tuple[asyncio.Future[Answer], Answer | BaseException]]:
        """Processes ``batch`` (under ``_processing``): each caller's future and outcome, in order."""
        weight = self._taken(batch)
        self.batch_sizes[weight] += 1
        started = time.monotonic()
        try:
            outcomes = list(self.process([pending.item for pending in batch]))
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
        except Exception as exc:  # every waiting caller learns of it; the thread lives on
            log.exception("processing a batch failed")
            outcomes = [exc] * len(batch)
        per_unit = (time.monotonic() - started) / max(weight, 1)
        self._seconds_per_unit += 0.2 * (per_unit - self._seconds_per_unit)
        return [(pending.future, outcome) for pending, outcome in zip(batch, outcomes, strict=True)]

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                return
            self._busy = len(batch) > 1
            with self._processing:
                answers = self._process_batch(batch)
                self._holding = bool(self._backlog)
            by_loop: defaultdict[
                asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Answer], Answer | BaseException]]
            ] = defaultdict(list)
            for pending, answer in zip(batch, answers, strict=True):
                by_loop[pending.loop].append(answer)
            for loop, loop_answers in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting there
                    loop.call_soon_threadsafe(_deliver, loop_answers)


def _deliver(answers: list[tuple[asyncio.Future[Answer], Answer | BaseException]]) -> None:
    for future, outcome in answers:
        if future.done():  # cancelled: the client went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
