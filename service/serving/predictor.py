"""Serving predictions: resolves which model answers, keeps loaded checkpoints in memory, runs them.

Requests go through a micro-batcher (service/serving/batching.py): one thread takes every request waiting, reads
the registry's version once for all of them, resolves each model name once, decodes the uploads, runs
one forward pass per model and computes the top-k for the whole batch. Work that would hold up the
others in the batch, decoding a large image or loading a checkpoint from disk, goes to the thread pool
first, where such requests run side by side; they then come back for the shared forward pass.

An upload that cannot be used (empty, corrupt, not an image, too large) is that image's outcome alone: the
request's other images, and the other requests of its batch, are predicted all the same. Only what
concerns a whole request (its model cannot be found or loaded) fails the request.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import overload

import torch
from starlette.concurrency import run_in_threadpool
from torch import nn

from models.data import CLASS_NAMES, images_to_inputs
from models.devices import resolve_device
from models.preprocessing import SIZE, load_image, open_upload, preprocess_image
from models.spec import INPUT_FEATURES
from service.registry import current_version, get_model, load_model
from service.serving.batching import MicroBatcher
from service.settings import Settings
from service.store.artifacts import ArtifactStore
from service.store.db import Database
from service.store.tables import Model

# Uploads up to this many pixels are decoded in the batching thread (a 28x28 PNG takes about 0.1 ms);
# larger ones are decoded in the thread pool, in parallel, before they join a batch.
INLINE_PIXELS = 256 * 256


@dataclass(frozen=True)
class ClassProbability:
    class_id: int
    class_name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    top_k: list[ClassProbability]

    @property
    def best(self) -> ClassProbability:
        return self.top_k[0]


# One image's outcome: its prediction, or the exception that says why the image could not be used.
ImageOutcome = Prediction | Exception


@dataclass(eq=False)
class PredictRequest:
    """One request's images and what it asks for.

    ``encoded``: the uploads, each its bytes or, for one the route could not read (over the size limit),
    the exception that says why. ``images``: the usable ones decoded, (M, 28, 28) uint8, in order;
    ``rejected``: the index of each unusable upload and why. Pixel arrays come as ``images`` directly.
    """

    model: str | None
    top_k: int
    encoded: list[bytes | Exception] = field(default_factory=list)
    images: torch.Tensor | None = None
    rejected: dict[int, Exception] = field(default_factory=dict)
    prepared: bool = False  # the slow parts (decoding large uploads, loading the model) are done
    cache_miss: bool = False  # its model was not in the cache when it first reached the batch

    @property
    def count(self) -> int:
        """How many images the request carries, usable or not."""
        return len(self.images) + len(self.rejected) if self.images is not None else len(self.encoded)

    @property
    def usable(self) -> int:
        """How many images the forward pass gets: those decoded, without the rejected ones."""
        return len(self.images) if self.images is not None else 0

    def outcomes(self, predictions: list[Prediction]) -> list[ImageOutcome]:
        """Each image's outcome in request order: ``predictions`` are the usable images', in order."""
        if not self.rejected:
            return list(predictions)
        usable = iter(predictions)
        return [self.rejected[index] if index in self.rejected else next(usable) for index in range(self.count)]


class Deferred:
    """The batch's answer to a request with work that would hold up the rest of its batch (a large upload to
    decode, a model to load): do that work in the thread pool, then submit the request again."""


DEFERRED = Deferred()
BatchOutcome = tuple[str, list[ImageOutcome]] | Deferred


class ModelCache:
    """The last ``capacity`` loaded checkpoints, by model id (least recently used goes first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str) -> nn.Module | None:
        with self._lock:
            module = self._models.get(model_id)
            if module is not None:
                self._models.move_to_end(model_id)
            return module

    def __len__(self) -> int:
        return len(self._models)

    def put(self, model_id: str, module: nn.Module) -> None:
        with self._lock:
            self._models[model_id] = module
            self._models.move_to_end(model_id)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)


class Predictor:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.artifacts = ArtifactStore.for_settings(settings)
        self.device = resolve_device(settings.predict_device)
        self.cache = ModelCache(settings.model_cache_size)
        self.batcher: MicroBatcher[PredictRequest, BatchOutcome] = MicroBatcher(
            self._process,
            max_batch=settings.predict_max_batch,
            max_wait=settings.predict_max_wait_ms / 1000,
            weight=lambda request: request.count,
            max_queue=settings.predict_max_queue,
            readmit=lambda request: request.prepared,  # deferred once, admitted then: it comes back past the bound
            loop_max=settings.predict_loop_max,  # small batches on the event loop: no thread hand-off
            name="predict-batcher",
        )
        # Model names resolved while the registry's version stood at ``_resolved_version``.
        self._resolved: dict[str | None, Model] = {}
        self._resolved_version: int | None = None
        self._resolved_lock = threading.Lock()
        # For GET /metrics; only the batching thread writes them. Cache lookups count once per request that
        # reached its forward pass; forward_sizes counts forward passes by their number of images.
        self.cache_hits = 0
        self.cache_misses = 0
        self.forward_sizes: Counter[int] = Counter()

    def close(self) -> None:
        self.batcher.close()

    @overload
    async def predict(self, model: str | None, top_k: int, *, images: torch.Tensor) -> tuple[str, list[Prediction]]: ...

    @overload
    async def predict(
        self, model: str | None, top_k: int, *, encoded: list[bytes | Exception]
    ) -> tuple[str, list[ImageOutcome]]: ...

    async def predict(
        self,
        model: str | None,
        top_k: int,
        *,
        encoded: list[bytes | Exception] | None = None,
        images: torch.Tensor | None = None,
    ) -> tuple[str, list[Prediction]] | tuple[str, list[ImageOutcome]]:
        """Classifies uploaded images (``encoded``: each its bytes, or the exception that says why it could
        not be read) or (N, 28, 28) uint8 ``images`` with the model that ``model`` names (an id or an
        alias), else the ``production`` alias, else the newest model.

        Returns the model's id and one outcome per image, in order: a `Prediction` (best class first), or
        for an upload that cannot be used the exception that says why (`ImageRejected`, `UploadTooLarge`,
        or an unexpected one); ``images`` are all usable, so all predicted. Raises what concerns the whole
        request: `ModelNotFound`, `NoModelYet`, `CheckpointError`."""
        request = PredictRequest(model, top_k, encoded=encoded or [], images=images)
        outcome = await self.batcher.submit(request)
        if isinstance(outcome, Deferred):
            await run_in_threadpool(self._prepare, request)
            outcome = await self.batcher.submit(request)
        assert not isinstance(outcome, Deferred)  # a prepared request is never deferred
        return outcome

    def _prepare(self, request: PredictRequest) -> None:
        """The slow parts, in the thread pool: decode every upload, load the model into the cache."""
        if request.images is None:
            decoded = self._decode(request.encoded, max_pixels=None)
            assert decoded is not None  # with no pixel bound, every upload is decoded or rejected
            request.images, request.rejected = decoded
        record = self._resolve(current_version(self.db), request.model)
        if self.cache.get(record.id) is None:
            self._load(record)
        request.prepared = True

    def _decode(
        self, encoded: list[bytes | Exception], *, max_pixels: int | None
    ) -> tuple[torch.Tensor, dict[int, Exception]] | None:
        """The usable uploads as (M, 28, 28) uint8, and why each of the others cannot be used, by index; None
        as soon as an upload has more than ``max_pixels`` pixels (too slow to decode here)."""
        images: list[torch.Tensor] = []
        rejected: dict[int, Exception] = {}
        for index, data in enumerate(encoded):
            if isinstance(data, Exception):
                rejected[index] = data
                continue
            try:
                image = open_upload(data, max_pixels=self.settings.max_image_pixels)
            except Exception as exc:  # this upload's problem alone: the others in the request go on
                rejected[index] = exc
                continue
            if max_pixels is not None and image.width * image.height > max_pixels:
                return None
            try:
                images.append(preprocess_image(load_image(image)))
            except Exception as exc:
                rejected[index] = exc
        if not images:
            return torch.empty((0, SIZE, SIZE), dtype=torch.uint8), rejected
        return torch.stack(images), rejected

    def _resolve(self, version: int, name: str | None) -> Model:
        """The model ``name`` names, from a cache that holds while the registry's version does not move."""
        with self._resolved_lock:
            if version != self._resolved_version:
                self._resolved, self._resolved_version = {}, version
            record = self._resolved.get(name)
        if record is None:
            record = get_model(self.db, name)
            with self._resolved_lock:
                if version == self._resolved_version:
                    self._resolved[name] = record
        return record

    def _load(self, record: Model) -> nn.Module:
        """Loads ``record``'s checkpoint into the cache, warmed by one forward pass."""
        module, _spec = load_model(self.db, record, self.artifacts, self.device)
        with torch.inference_mode():  # warm: the first request should not pay for lazy set-up
            module(torch.zeros(1, INPUT_FEATURES, device=self.device))
        self.cache.put(record.id, module)
        return module

    def _process(self, requests: list[PredictRequest]) -> list[BatchOutcome | BaseException]:
        """One batch, in the batching thread: every request's outcome, in order. A request whose model is not
        cached, or that holds a large upload, is ``DEFERRED`` the first time: its slow work would hold up the
        batch. Once prepared, it is served here whatever happened meanwhile (a model evicted since is loaded)."""
        outcomes: list[BatchOutcome | BaseException | None] = [None] * len(requests)
        version = current_version(self.db)  # one read for the batch; it began after every request arrived
        groups: dict[str, tuple[nn.Module, list[int]]] = {}
        for index, request in enumerate(requests):
            try:
                record = self._resolve(version, request.model)
                module = self.cache.get(record.id)
                if not request.prepared:
                    request.cache_miss = module is None
                    if module is None:
                        outcomes[index] = DEFERRED
                        continue
                if request.images is None:
                    decoded = self._decode(request.encoded, max_pixels=None if request.prepared else INLINE_PIXELS)
                    if decoded is None:
                        outcomes[index] = DEFERRED
                        continue
                    request.images, request.rejected = decoded
                if module is None:
                    module = self._load(record)
            except Exception as exc:
                outcomes[index] = exc
                continue
            if not request.usable:  # every upload was unusable: nothing to run
                outcomes[index] = (record.id, request.outcomes([]))
                continue
            groups.setdefault(record.id, (module, []))[1].append(index)
            if request.cache_miss:
                self.cache_misses += 1
            else:
                self.cache_hits += 1
        for model_id, (module, indices) in groups.items():
            try:
                answers = self._forward(module, [requests[index] for index in indices])
            except Exception as exc:  # this model's requests fail; the other models' are unaffected
                for index in indices:
                    outcomes[index] = exc
                continue
            for index, answer in zip(indices, answers, strict=True):
                outcomes[index] = (model_id, requests[index].outcomes(answer))
            self.forward_sizes[sum(requests[index].usable for index in indices)] += 1
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    @torch.inference_mode()
    def _forward(self, module: nn.Module, requests: list[PredictRequest]) -> list[list[Prediction]]:
        """One forward pass and one top-k for the images of all ``requests``."""
        images = torch.cat([request.images for request in requests if request.images is not None])
        logits = module(images_to_inputs(images.to(self.device, non_blocking=True)))
        k = min(max(request.top_k for request in requests), len(CLASS_NAMES))
        values, indices = torch.softmax(logits, dim=1).topk(k, dim=1)
        rows = zip(values.tolist(), indices.tolist(), strict=True)
        answers = []
        for request in requests:
            answers.append(
                [
                    Prediction(
                        top_k=[
                            ClassProbability(class_id=i, class_name=CLASS_NAMES[i], probability=p)
                            for p, i in zip(row_values[: request.top_k], row_indices[: request.top_k], strict=True)
                        ]
                    )
                    for row_values, row_indices in (next(rows) for _ in range(request.usable))
                ]
            )
        return answers
