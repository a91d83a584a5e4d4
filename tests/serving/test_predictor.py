"""The prediction pipeline under concurrent requests: batched decoding, resolution and forward passes give
every request exactly the answer it would get alone, and one bad request spoils nothing for the others.

Then batches with bad files: a bad file costs only its own entry, in its request and in its micro-batch,
and every error names the file's index and filename."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
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
from service.api.routes.predict import image_error
from service.serving.batching import MicroBatcher
from service.serving.predictor import INLINE_PIXELS
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.idx import synthetic_split

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
        upload(b"just some text", model=first),
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


# -- batches with bad files ---------------------------------------------------------------------------

MAX_PIXELS = 2_000_000  # above the 1200x900 photos, below TOO_MANY_PIXELS
TOO_MANY_PIXELS = (1500, 1500)


def blank_png() -> bytes:
    return png_bytes(np.full((28, 28), 90, dtype=np.uint8))


# Files that stay bad whatever formats are read: (name, bytes, status, type).
BAD_FILES = [
    ("truncated.png", png_bytes(synthetic_split(1, seed=9)[0][0])[:60], 400, "corrupt_image"),
    ("empty.png", b"", 400, "empty_image"),
    ("notes.txt", b"a shopping list, not a picture\n", 415, "unsupported_image"),
    ("noise.bin", np.random.default_rng(0).bytes(300), 415, "unsupported_image"),
    ("huge.png", png_bytes(np.zeros(TOO_MANY_PIXELS, dtype=np.uint8)), 413, "image_too_large"),
    ("blank.png", blank_png(), 422, "no_object_found"),
]
BAD_IDS = [name for name, *_ in BAD_FILES]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[TestClient]:
    """One app with one trained model, for the whole module (SQLite)."""
    app_settings = Settings(
        home=tmp_path_factory.mktemp("bad-files") / "home",
        data_dir=synthetic_data_dir,
        max_image_pixels=MAX_PIXELS,
        lease_seconds=5,
        poll_seconds=0.05,
    )
    migrations.upgrade(app_settings.sqlalchemy_url)
    db = Database(app_settings.sqlalchemy_url)
    with TestClient(create_app(app_settings)) as client:
        client.post("/v1/jobs", json={**TINY, "seed": 3})
        assert Worker(app_settings, db, torch.device("cpu"), burst=True).run_once()
        yield client
    db.dispose()


def good_files(n: int, seed: int = 6) -> list[tuple[str, bytes]]:
    images, _ = synthetic_split(n, seed=seed)
    return [(f"garment-{i}.png", png_bytes(image)) for i, image in enumerate(images)]


def alone(client: TestClient, data: bytes) -> dict[str, Any]:
    """An image's answer when it is sent by itself."""
    response = client.post("/v1/predict", files={"file": ("x.png", data)}, params={"top_k": 10})
    assert response.status_code == 200, response.text
    return dict(response.json())


def post_files(client: TestClient, files: list[tuple[str, bytes]], **params: Any) -> httpx.Response:
    return client.post("/v1/predict", files=[("files", file) for file in files], params={"top_k": 10, **params})


def assert_entry_predicted(entry: dict[str, Any], index: int, name: str, expected: dict[str, Any]) -> None:
    assert entry["index"] == index and entry["filename"] == name and "error" not in entry, entry
    (lone,) = expected["predictions"]
    assert [c["class_id"] for c in entry["top_k"]] == [c["class_id"] for c in lone["top_k"]]
    assert [c["probability"] for c in entry["top_k"]] == pytest.approx([c["probability"] for c in lone["top_k"]])
    assert entry["class_id"] == lone["class_id"]


def assert_entry_failed(entry: dict[str, Any], index: int, name: str, status: int, kind: str) -> None:
    assert entry["index"] == index and entry["filename"] == name and "class_id" not in entry, entry
    error = entry["error"]
    assert error["status"] == status and error["type"] == kind, error
    assert error["detail"].startswith(f"file {index} ({name!r}): "), error["detail"]
    assert len(error["detail"]) > len(f"file {index} ({name!r}): ") + 10, "it says what is wrong"


@pytest.mark.parametrize(("name", "data", "status", "kind"), BAD_FILES, ids=BAD_IDS)
def test_one_bad_file_among_six_good_ones_costs_only_its_own_entry(
    served: TestClient, name: str, data: bytes, status: int, kind: str
) -> None:
    good = good_files(6)
    expected = [alone(served, payload) for _, payload in good]
    for position in (0, 3, 6):
        files = [*good[:position], (name, data), *good[position:]]
        response = post_files(served, files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["failed"] == 1 and len(body["predictions"]) == 7 and "detail" not in body
        assert_entry_failed(body["predictions"][position], position, name, status, kind)
        others = [entry for entry in body["predictions"] if entry["index"] != position]
        for entry, (good_name, _), lone in zip(others, good, expected, strict=True):
            assert_entry_predicted(entry, entry["index"], good_name, lone)


def test_several_bad_files_each_get_their_own_error(served: TestClient) -> None:
    good = good_files(3)
    files = [BAD_FILES[0][:2], good[0], BAD_FILES[2][:2], good[1], BAD_FILES[5][:2], good[2], BAD_FILES[4][:2]]
    body = post_files(served, files).json()
    assert body["failed"] == 4
    assert [entry.get("error", {}).get("status") for entry in body["predictions"]] == [
        400, None, 415, None, 422, None, 413
    ]  # fmt: skip
    for entry, (name, _) in zip(body["predictions"], files, strict=True):
        assert entry["filename"] == name


@pytest.mark.parametrize(
    ("order", "status"),
    [
        (["notes.txt", "truncated.png", "empty.png"], 415),
        (["truncated.png", "notes.txt", "empty.png"], 400),
        (["huge.png", "blank.png"], 413),
        (["blank.png", "noise.bin"], 422),
    ],
)
def test_a_batch_where_no_file_can_be_used_answers_the_first_ones_status(
    served: TestClient, order: list[str], status: int
) -> None:
    by_name = {name: (data, file_status, kind) for name, data, file_status, kind in BAD_FILES}
    response = post_files(served, [(name, by_name[name][0]) for name in order])
    assert response.status_code == status, response.text
    body = response.json()
    assert body["failed"] == len(order) and body["model_id"]
    for index, (entry, name) in enumerate(zip(body["predictions"], order, strict=True)):
        assert_entry_failed(entry, index, name, by_name[name][1], by_name[name][2])
    first = body["predictions"][0]["error"]["detail"]
    assert body["detail"].startswith(first)
    others = "the other image" if len(order) == 2 else f"the other {len(order) - 1} images"
    assert f"(and {others} could not be used either" in body["detail"]


@pytest.mark.parametrize(("name", "data", "status", "kind"), BAD_FILES, ids=BAD_IDS)
def test_a_single_bad_file_answers_its_status_naming_the_file(
    served: TestClient, name: str, data: bytes, status: int, kind: str
) -> None:
    for field in ("file", "files"):  # the same answer in either field
        response = served.post("/v1/predict", files=[(field, (name, data, "application/octet-stream"))])
        assert response.status_code == status, response.text
        body = response.json()
        assert body["detail"].startswith(f"file 0 ({name!r}): ")
        assert body["failed"] == 1
        assert_entry_failed(body["predictions"][0], 0, name, status, kind)
        assert body["detail"] == body["predictions"][0]["error"]["detail"]


def test_file_and_files_together_are_numbered_file_first(served: TestClient) -> None:
    (good,) = good_files(1)
    response = served.post(
        "/v1/predict", files=[("file", BAD_FILES[2][:2]), ("files", good), ("files", BAD_FILES[1][:2])]
    )
    body = response.json()
    assert response.status_code == 200 and body["failed"] == 2
    assert [entry["index"] for entry in body["predictions"]] == [0, 1, 2]
    assert_entry_failed(body["predictions"][0], 0, "notes.txt", 415, "unsupported_image")
    assert_entry_failed(body["predictions"][2], 2, "empty.png", 400, "empty_image")


def test_an_upload_over_the_size_limit_is_its_own_413(served: TestClient) -> None:
    app: FastAPI = served.app  # type: ignore[assignment]
    small = app.state.settings.model_copy(update={"max_upload_bytes": 4096})
    big = png_bytes(np.random.default_rng(1).integers(0, 255, (100, 100), dtype=np.uint8))
    assert len(big) > 4096
    good = good_files(2)
    with TestClient(create_app(small)) as client:
        body = post_files(client, [good[0], ("big.png", big), good[1]]).json()
        assert body["failed"] == 1
        assert_entry_failed(body["predictions"][1], 1, "big.png", 413, "upload_too_large")
        assert "4096" in body["predictions"][1]["error"]["detail"]
        assert_entry_predicted(body["predictions"][2], 2, good[1][0], alone(served, good[1][1]))
        single = client.post("/v1/predict", files={"file": ("big.png", big)})
        assert single.status_code == 413 and single.json()["detail"].startswith("file 0 ('big.png'): ")


def test_a_whole_request_problem_comes_before_its_files_own(served: TestClient) -> None:
    """An unknown model is the request's 404, whatever its files hold: no entries, a plain detail."""
    response = post_files(served, [BAD_FILES[2][:2], *good_files(1)], model="no-such-model")
    assert response.status_code == 404
    assert set(response.json()) == {"detail", "code"}


def test_a_large_photo_and_a_bad_file_in_one_request(served: TestClient) -> None:
    """A photo sends its request through the thread pool first: its bad file is still its own entry there."""
    images, _ = synthetic_split(2, seed=7)
    big = photo(images[0])
    files = [("photo.png", big), BAD_FILES[0][:2], ("small.png", png_bytes(images[1]))]
    body = post_files(served, files).json()
    assert body["failed"] == 1
    assert_entry_failed(body["predictions"][1], 1, "truncated.png", 400, "corrupt_image")
    pixels = served.post("/v1/predict/pixels", params={"top_k": 10}, json={"images": [preprocess_upload(big).tolist()]})
    assert_entry_predicted(body["predictions"][0], 0, "photo.png", pixels.json())
    assert_entry_predicted(body["predictions"][2], 2, "small.png", alone(served, png_bytes(images[1])))


def test_rejected_files_take_no_row_in_the_forward_pass(served: TestClient) -> None:
    predictor = served.app.state.predictor  # type: ignore[attr-defined]
    before = dict(predictor.forward_sizes)
    post_files(served, [*good_files(5), BAD_FILES[3][:2], BAD_FILES[1][:2]])
    post_files(served, [BAD_FILES[3][:2], BAD_FILES[1][:2]])  # nothing to run
    grown = {size: count - before.get(size, 0) for size, count in predictor.forward_sizes.items()}
    assert {size: count for size, count in grown.items() if count} == {5: 1}


def test_bad_files_in_a_micro_batch_cost_only_their_own_entries(served: TestClient) -> None:
    app: FastAPI = served.app  # type: ignore[assignment]
    good = good_files(6, seed=8)
    expected = [alone(served, data) for _, data in good]
    requests: list[dict[str, Any]] = [
        {"files": [("files", good[0])], "params": {"top_k": 10}},
        {"files": [("files", good[1]), ("files", BAD_FILES[0][:2]), ("files", good[2])], "params": {"top_k": 10}},
        {"files": [("files", BAD_FILES[2][:2]), ("files", BAD_FILES[5][:2])], "params": {"top_k": 10}},
        {"files": {"file": BAD_FILES[1][:2]}, "params": {"top_k": 10}},
        {"files": [("files", good[3]), ("files", good[4])], "params": {"top_k": 10}},
        {"files": [("files", BAD_FILES[4][:2]), ("files", good[5])], "params": {"top_k": 10}},
    ]
    hold_first_batch_until_the_rest_wait(app.state.predictor.batcher, len(requests))
    before = Counter(app.state.predictor.batcher.batch_sizes)
    responses = asyncio.run(send_all(app, requests))
    assert [response.status_code for response in responses] == [200, 200, 415, 400, 200, 200]
    bodies = [response.json() for response in responses]
    assert [body["failed"] for body in bodies] == [0, 1, 2, 1, 0, 1]
    assert_entry_predicted(bodies[0]["predictions"][0], 0, good[0][0], expected[0])
    assert_entry_predicted(bodies[1]["predictions"][0], 0, good[1][0], expected[1])
    assert_entry_failed(bodies[1]["predictions"][1], 1, "truncated.png", 400, "corrupt_image")
    assert_entry_predicted(bodies[1]["predictions"][2], 2, good[2][0], expected[2])
    assert_entry_predicted(bodies[4]["predictions"][0], 0, good[3][0], expected[3])
    assert_entry_predicted(bodies[4]["predictions"][1], 1, good[4][0], expected[4])
    assert_entry_failed(bodies[5]["predictions"][0], 0, "huge.png", 413, "image_too_large")
    assert_entry_predicted(bodies[5]["predictions"][1], 1, good[5][0], expected[5])
    grown = app.state.predictor.batcher.batch_sizes - before
    assert max(grown) > 3, f"the requests never shared a batch (images per batch: {grown})"


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        ("a.png", "file 2 ('a.png')"),
        (None, "file 2 (no filename)"),
        ("x" * 300, f"file 2 ('{'x' * 77}...')"),
        ("it's \x1b[31mred.png", 'file 2 ("it\'s \\x1b[31mred.png")'),  # quoted as Python does: escapes shown
    ],
)
def test_an_unexpected_error_is_a_500_entry_that_names_the_file(filename: str | None, shown: str) -> None:
    error = image_error(RuntimeError("a decoder bug"), 2, filename)
    assert error.status == 500 and error.type == "internal_error"
    assert error.detail == f"{shown}: internal error; the server log has the details"
    assert "decoder bug" not in error.detail, "the server log has it, not the client"
