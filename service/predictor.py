"""Serving predictions: resolves which model answers, keeps loaded checkpoints in memory, runs them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from models.checkpoints import load_checkpoint
from models.data import CLASS_NAMES
from models.spec import INPUT_FEATURES
from service.batching import MicroBatcher
from service.db import Database
from service.registry import current_version, get_model
from service.settings import Settings
from service.tables import Model


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

    def put(self, model_id: str, module: nn.Module) -> None:
        with self._lock:
            self._models[model_id] = module
            self._models.move_to_end(model_id)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)


class Predictor:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.cache = ModelCache(settings.model_cache_size)
        self.batcher = MicroBatcher(settings.predict_max_batch, settings.predict_max_wait_ms / 1000)
        self._resolved: dict[str | None, Model] = {}
        self._resolved_version: int | None = None
        self._resolved_lock = threading.Lock()

    def close(self) -> None:
        self.batcher.close()

    def _resolve(self, ref: str | None) -> Model:
        """The model ``ref`` names, from a cache that holds while the registry's version does not move."""
        version = current_version(self.db)
        with self._resolved_lock:
            if version != self._resolved_version:
                self._resolved, self._resolved_version = {}, version
            record = self._resolved.get(ref)
        if record is None:
            record = get_model(self.db, ref)
            with self._resolved_lock:
                if version == self._resolved_version:
                    self._resolved[ref] = record
        return record

    def _load(self, model_id: str | None) -> tuple[str, nn.Module]:
        record = self._resolve(model_id)
        module = self.cache.get(record.id)
        if module is None:
            module, _spec = load_checkpoint(
                self.settings.checkpoint_dir / record.filename, expected_sha256=record.sha256
            )
            with torch.inference_mode():  # warm: the first request should not pay for lazy set-up
                module(torch.zeros(1, INPUT_FEATURES))
            self.cache.put(record.id, module)
        return record.id, module

    def predict(self, images: list[torch.Tensor], model_id: str | None, top_k: int) -> tuple[str, list[Prediction]]:
        """Classifies (28, 28) uint8 images with the model ``model_id`` names (an id or an alias), else the
        ``production`` alias, else the newest model."""
        resolved_id, module = self._load(model_id)
        probabilities = self.batcher.probabilities(resolved_id, module, torch.stack(images))
        values, indices = probabilities.topk(min(top_k, len(CLASS_NAMES)), dim=1)
        predictions = [
            Prediction(
                top_k=[
                    ClassProbability(class_id=int(i), class_name=CLASS_NAMES[int(i)], probability=float(p))
                    for p, i in zip(row_values.tolist(), row_indices.tolist(), strict=True)
                ]
            )
            for row_values, row_indices in zip(values, indices, strict=True)
        ]
        return resolved_id, predictions
