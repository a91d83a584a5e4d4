"""The prediction pipeline under concurrent requests: batched decoding, resolution and forward passes give
every request exactly the answer it would get alone, and one bad request spoils nothing for the others."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from models.preprocessing import preprocess_upload
from service.api.app import create_app
from service.batching import MicroBatcher
from service.db import Database
from service.predictor import INLINE_PIXELS
from service.settings import Settings
from service.worker import Worker
from tests.idx import synthetic_split

TINY = {"hidden_layers": [16], "batch_size": 64, "epochs": 3}


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(image: np.ndarray, size: tuple[int, int] = (1200, 900)) -> bytes:
    """A large RGB 'photo' of a light-on-dark garment: dark garment on a white page, upscaled."""
    negative = Image.fromarray(255 - image).resize((size[1] * 2 // 3, size[1] * 2 // 3), Image.Resampling.BICUBIC)
    page = Image.new("L", size, 255)
    page.paste(negative, ((size[0] - negative.width) // 2, (size[1] - negative.height) // 2))
    buffer = io.BytesIO()
    page.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def app_with_two_models(settings: Settings, db: Database) -> Iterator[tuple[FastAPI, list[str]]]:
    app = create_app(settings)
    with TestClient(app) as client:
        ids = []
        for seed in (1, 2):
            job = client.post("/v1/jobs", json={**TINY, "seed": seed}).json()
            assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
            ids.append(client.get(f"/v1/jobs/{job['id']}").json()["model_id"])
        yield app, ids


async def send_all(app: FastAPI, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """All ``requests`` at once, on one event loop, so that they meet in the batcher."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(*(client.post("/v1/predict", **request) for request in requests))


def assert_same_answer(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Same model, same classes in the same order; probabilities equal up to float rounding (a batch of
    another size sums its matrix products in another order)."""
    assert got["model_id"] == expected["model_id"]
    assert len(got["predictions"]) == len(expected["predictions"])
    for a, b in zip(got["predictions"], expected["predictions"], strict=True):
        assert [c["class_id"] for c in a["top_k"]] == [c["class_id"] for c in b["top_k"]]
        assert [c["probability"] for c in a["top_k"]] == pytest.approx([c["probability"] for c in b["top_k"]], abs=1e-6)


def upload(data: bytes, **params: Any) -> dict[str, Any]:
    return {"files": {"file": ("x.png", data)}, "params": {"top_k": 10, **params}}


def hold_first_batch_until_the_rest_wait(batcher: MicroBatcher[Any, Any], total: int) -> None:
    """The next batch waits (up to 10 s) until the other requests are queued behind it, so that they meet
    in one batch however slowly a loaded machine delivers them."""
    process = batcher.process

    def held(items: list[Any]) -> Any:
        batcher.process = process
        deadline = time.monotonic() + 10
        while batcher._queue.qsize() < total - len(items) and time.monotonic() < deadline:
            time.sleep(0.005)
        return process(items)

    batcher.process = held


def test_concurrent_requests_get_exactly_their_lone_answers(app_with_two_models: tuple[FastAPI, list[str]]) -> None:
    app, (first, second) = app_with_two_models
    images, _ = synthetic_split(12, seed=3)
    requests = [upload(png_bytes(image), model=first if i % 2 else second) for i, image in enumerate(images)]
    alone = [asyncio.run(send_all(app, [request]))[0] for request in requests]
    hold_first_batch_until_the_rest_wait(app.state.predictor.batcher, len(requests))
    together = asyncio.run(send_all(app, requests))
    for lone, batched, request in zip(alone, together, requests, strict=True):
        assert lone.status_code == batched.status_code == 200
        assert batched.json()["model_id"] == request["params"]["model"]
        assert_same_answer(batched.json(), lone.json())
    assert max(app.state.predictor.batcher.batch_sizes) > 1, "the concurrent requests never shared a batch"


def test_one_bad_request_spoils_nothing_for_the_rest_of_its_batch(
    app_with_two_models: tuple[FastAPI, list[str]],
) -> None:
    app, (first, _) = app_with_two_models
    images, _ = synthetic_split(6, seed=4)
    good = [upload(png_bytes(image), model=first) for image in images]
    bad = [
        upload(png_bytes(images[0])[:60], model=first),  # a truncated PNG
        upload(b"GIF89a" + b"\x00" * 40, model=first),
        upload(png_bytes(images[0]), model="no-such-alias"),
        upload(b"", model=first),
    ]
    responses = asyncio.run(send_all(app, good[:3] + bad + good[3:]))
    statuses = [response.status_code for response in responses]
    assert statuses == [200, 200, 200, 400, 415, 404, 400, 200, 200, 200], [r.text for r in responses]
    assert all("detail" in response.json() for response in responses[3:7])
    alone = [asyncio.run(send_all(app, [request]))[0].json() for request in good]
    for response, expected in zip(responses[:3] + responses[7:], alone, strict=True):
        assert_same_answer(response.json(), expected)


def test_a_large_photo_predicts_like_its_preprocessed_pixels(app_with_two_models: tuple[FastAPI, list[str]]) -> None:
    app, (first, _) = app_with_two_models
    images, _ = synthetic_split(4, seed=5)
    photos = [photo(image) for image in images]
    assert INLINE_PIXELS < 1200 * 900  # decoded in the thread pool before joining a batch
    small = [upload(png_bytes(image), model=first) for image in images]
    responses = asyncio.run(send_all(app, [upload(data, model=first) for data in photos] + small))
    assert all(response.status_code == 200 for response in responses), [r.text for r in responses]
    with TestClient(app) as client:
        for data, response in zip(photos, responses[: len(photos)], strict=True):
            pixels = preprocess_upload(data).tolist()
            expected = client.post(
                "/v1/predict/pixels", params={"model": first, "top_k": 10}, json={"images": [pixels]}
            )
            assert_same_answer(response.json(), expected.json())
