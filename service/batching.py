"""Micro-batching: concurrent prediction requests for the same model share one forward pass.

Request threads hand their images to one batching thread and wait. That thread takes everything queued
at that moment (up to ``max_batch`` images, waiting up to ``max_wait`` for more when it is set), runs
one forward pass per model, and hands each request its rows back. Under light load a request goes
through alone with no added wait; under heavy load requests that arrived during the last forward pass
ride together in the next.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import nn

from models.data import images_to_inputs

log = logging.getLogger(__name__)


@dataclass
class _Request:
    model_id: str
    module: nn.Module
    images: torch.Tensor
    result: Future[torch.Tensor] = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, max_batch: int, max_wait: float) -> None:
        self.max_batch, self.max_wait = max_batch, max_wait
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self.batch_sizes: Counter[int] = Counter()  # images per forward pass, for metrics and tests
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def probabilities(self, model_id: str, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, 10) for uint8 images (N, 28, 28), computed in a shared batch."""
        request = _Request(model_id, module, images)
        self._queue.put(request)
        return request.result.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first: _Request) -> list[_Request]:
        batch, size = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            batch.append(item)
            size += len(item.images)
        return batch

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._collect(first)
            by_model: dict[str, list[_Request]] = {}
            for request in batch:
                by_model.setdefault(request.model_id, []).append(request)
            for requests in by_model.values():
                self._forward(requests)

    @torch.inference_mode()
    def _forward(self, requests: list[_Request]) -> None:
        try:
            images = torch.cat([request.images for request in requests])
            self.batch_sizes[len(images)] += 1
            probabilities = torch.softmax(requests[0].module(images_to_inputs(images)), dim=1)
            start = 0
            for request in requests:
                request.result.set_result(probabilities[start : start + len(request.images)])
                start += len(request.images)
        except Exception as exc:  # every waiting request learns of it; the thread lives on
            log.exception("batched forward pass failed")
            for request in requests:
                if not request.result.done():
                    request.result.set_exception(exc)
