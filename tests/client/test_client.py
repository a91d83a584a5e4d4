"""service.client.Client against a real server process and a real worker process."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from httpx_sse import connect_sse
from PIL import Image

from service.client import (
    Client,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PredictionFailedPublic,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
)
from service.client.client import FILES_PER_REQUEST
from service.errors import ModelNotFound
from service.jobs.status import JobStatus
from service.schemas import EpochMetricsPublic, JobPublic, PredictionPublic
from tests.support.live import TINY, Live, live_stack
from tests.support.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LONG = {"hidden_layers": [16], "batch_size": 4, "epochs": 1000, "seed": 2}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Live]:
    # One stream at a time, so that a test can take the only one and see `wait` fall back to polling.
    with live_stack(tmp_path_factory.mktemp("client"), synthetic_data_dir, FMNIST_MAX_EVENT_STREAMS="1") as stack:
        yield stack


class RecordingTransport(httpx.HTTPTransport):
    """Real HTTP, with a log of (path, status) for each exchange."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.exchanges.append((request.url.path, response.status_code))
        return response


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def client(live: Live, transport: RecordingTransport) -> Iterator[Client]:
    with Client(live.url, api_key=live.admin_key, transport=transport) as fmnist:
        yield fmnist


@pytest.fixture(scope="module")
def trained(live: Live) -> JobPublic:
    """A finished job, and so a model; aliased `production`."""
    with Client(live.url, api_key=live.admin_key) as fmnist:
        job = fmnist.wait(fmnist.submit(TINY).id, timeout=60)
        assert job.model_id is not None
        fmnist.set_alias("production", job.model_id)
        return job


def garment(row: int) -> np.ndarray:
    """A 28x28 image like the synthetic set's: a bright band whose height gives the class."""
    image = np.full((28, 28), 10, dtype=np.uint8)
    image[row : row + 3, 4:24] = 230
    return image


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# -- jobs -------------------------------------------------------------------------------------------


def test_wait_reports_each_epoch_and_status_change_and_returns_the_finished_job(
    client: Client, transport: RecordingTransport
) -> None:
    epochs: list[EpochMetricsPublic] = []
    statuses: list[JobPublic] = []
    submitted = client.submit(TINY, epochs=4, batch_size=16)
    assert submitted.status is JobStatus.queued and submitted.spec.epochs == 4

    job = client.wait(submitted.id, on_epoch=epochs.append, on_status=statuses.append, timeout=60)
    during_wait = list(transport.exchanges)

    assert job.status is JobStatus.succeeded and job.model_id
    assert [m.epoch for m in epochs] == [1, 2, 3, 4]
    assert epochs == client.get_metrics(job.id).epochs
    assert statuses[-1] == job == client.get_job(job.id)
    assert [s.status for s in statuses] in (
        [JobStatus.queued, JobStatus.running, JobStatus.succeeded],
        [JobStatus.running, JobStatus.succeeded],
        [JobStatus.succeeded],
    )
    assert during_wait == [("/v1/jobs", 202), (f"/v1/jobs/{job.id}/events", 200)], "it followed the stream"


def test_wait_falls_back_to_polling_when_the_stream_is_refused(
    live: Live, client: Client, transport: RecordingTransport
) -> None:
    blocker = client.submit(LONG)
    headers = {"Authorization": f"Bearer {live.admin_key}"}
    # Hold the server's only stream slot while the blocker runs; cancel it a moment after `wait` begins.
    with (
        httpx.Client(base_url=live.url, headers=headers, timeout=30) as other,
        connect_sse(other, "GET", f"/v1/jobs/{blocker.id}/events") as held,
    ):
        assert held.response.status_code == 200
        job = client.submit(TINY, epochs=3)
        timer = threading.Timer(1.0, client.cancel_job, args=[blocker.id])
        timer.start()
        epochs: list[int] = []
        try:
            finished = client.wait(job.id, on_epoch=lambda m: epochs.append(m.epoch), poll_interval=0.1, timeout=60)
        finally:
            timer.join()
    assert finished.status is JobStatus.succeeded
    assert epochs == [1, 2, 3]
    assert (f"/v1/jobs/{job.id}/events", 503) in transport.exchanges
    assert (f"/v1/jobs/{job.id}/metrics", 200) in transport.exchanges
    assert client.get_job(blocker.id).status is JobStatus.cancelled


def test_wait_gives_up_after_its_timeout_and_the_job_goes_on(client: Client) -> None:
    blocker = client.submit(LONG)
    waiting = client.submit(TINY)  # queued behind the blocker: its stream is silent but for pings
    try:
        started = time.monotonic()
        with pytest.raises(WaitTimeout, match=waiting.id):
            client.wait(waiting.id, timeout=0.5)
        assert time.monotonic() - started < 5, "the timeout ends a silent stream, without waiting for a ping"
        assert client.get_job(waiting.id).status is JobStatus.queued
    finally:
        running, queued = client.cancel_job(blocker.id), client.cancel_job(waiting.id)
    assert running.cancel_requested or running.status is JobStatus.cancelled
    assert queued.status is JobStatus.cancelled  # a queued job ends at once
    assert client.wait(blocker.id, timeout=60).status is JobStatus.cancelled
    with pytest.raises(Conflict, match="already cancelled"):
        client.cancel_job(waiting.id)


def test_list_jobs_filters_and_pages(client: Client, trained: JobPublic) -> None:
    page = client.list_jobs(JobStatus.succeeded, limit=1)
    assert page.count >= 1 and len(page.data) == 1 and page.limit == 1
    assert all(job.status is JobStatus.succeeded for job in page.data)
    assert trained.id in {job.id for job in client.list_jobs("succeeded", limit=500).data}
    assert client.list_jobs(offset=10_000).data == []


def test_list_jobs_filters_sorts_and_iter_jobs_follows_the_cursors(client: Client, trained: JobPublic) -> None:
    adam = client.wait(client.submit({**TINY, "optimizer": "adam", "lr": 0.01}).id, timeout=60)
    client.update_job(adam.id, tags={"suite": "client", "kind": "adam"})
    client.update_job(trained.id, tags={"suite": "client"})
    tagged = client.list_jobs(tags={"suite": "client"}, sort="-test_acc").data
    assert {job.id for job in tagged} == {adam.id, trained.id}
    assert [job.test_acc for job in tagged] == sorted((job.test_acc for job in tagged), reverse=True)
    assert [job.id for job in client.list_jobs(tags=["suite:client", "kind:adam"]).data] == [adam.id]
    adam_only = client.list_jobs(where={"optimizer": "adam", "hidden_layers": [16], "lr": 0.01}, tags={"suite": None})
    assert [job.id for job in adam_only.data] == [adam.id] and adam_only.count == 1
    assert client.list_jobs(min_test_acc=1.0, max_test_acc=1.0, count=False).count is None
    everything = [job.id for job in client.list_jobs(limit=500).data]
    assert [job.id for job in client.iter_jobs(page_size=2)] == everything
    by_accuracy = [job.id for job in client.list_jobs(sort="test_acc", limit=500).data]
    assert [job.id for job in client.iter_jobs(sort="test_acc", page_size=3)] == by_accuracy
    first = client.list_jobs(sort="test_acc", limit=1)
    assert client.list_jobs(sort="test_acc", limit=1, cursor=first.next_cursor).data[0].id == by_accuracy[1]
    with pytest.raises(InvalidRequest) as caught:
        client.list_jobs(sort="-created_at", cursor=first.next_cursor)
    assert caught.value.code == "invalid_cursor"


def test_update_job_merges_tags_and_replaces_or_clears_the_note(client: Client) -> None:
    job = client.submit(TINY)
    labelled = client.update_job(job.id, tags={"team": "vision", "x": "1"}, note="first")
    assert (labelled.tags, labelled.note) == ({"team": "vision", "x": "1"}, "first")
    labelled = client.update_job(job.id, tags={"x": None})
    assert (labelled.tags, labelled.note) == ({"team": "vision"}, "first"), "the note stays"
    assert client.update_job(job.id, note=None).note is None
    assert client.update_job(job.id).tags == {"team": "vision"}, "nothing given: nothing changes"
    assert client.update_job(job.id, tags=None).tags == {}
    with pytest.raises(InvalidRequest) as caught:
        client.update_job(job.id, tags={"bad key": "x"})
    assert caught.value.errors[0]["loc"] == ["body", "tags", "bad key", "[key]"]
    with pytest.raises(NotFound):
        client.update_job("nope", note="x")
    client.wait(job.id, timeout=60)


def test_compare_jobs(client: Client, trained: JobPublic) -> None:
    other = client.wait(client.submit({**TINY, "lr": 0.2}).id, timeout=60)
    comparison = client.compare_jobs([trained.id, other.id])
    assert comparison.fields == ["lr"] and [job.id for job in comparison.jobs] == [trained.id, other.id]
    assert comparison.jobs[1].params == {"lr": 0.2}
    final, best = comparison.jobs[0].final, comparison.jobs[0].best_test
    assert final is not None and final.epoch == TINY["epochs"] and best is not None
    assert best.test_acc == max(row.test_acc for row in client.get_metrics(trained.id).epochs)
    with pytest.raises(NotFound, match="'nope'"):
        client.compare_jobs([trained.id, "nope"])
    with pytest.raises(TypeError):
        client.compare_jobs(trained.id)


def test_submit_with_a_preset_and_an_idempotency_key(client: Client) -> None:
    first = client.submit(preset="d2l-mlp", epochs=1, hidden_layers=[8], idempotency_key="client-test-1")
    again = client.submit(preset="d2l-mlp", epochs=1, hidden_layers=[8], idempotency_key="client-test-1")
    assert again.id == first.id and first.preset == "d2l-mlp" and first.spec.hidden_layers == [8]
    with pytest.raises(Conflict, match="Idempotency-Key"):
        client.submit(preset="d2l-mlp", epochs=2, idempotency_key="client-test-1")
    client.wait(first.id, timeout=60)


# -- errors -----------------------------------------------------------------------------------------


def test_an_invalid_spec_carries_the_field_errors(client: Client) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.submit(lr=-1, activation="swish")
    error = caught.value
    assert error.status == 422
    fields = {tuple(e["loc"]) for e in error.errors}
    assert ("body", "lr") in fields and ("body", "activation") in fields
    assert "lr: Input should be greater than 0" in str(error)


def test_unknown_ids_are_not_found_with_the_server_s_detail(client: Client) -> None:
    with pytest.raises(NotFound, match="no job with id 'nope'") as caught:
        client.get_job("nope")
    assert caught.value.status == 404 and caught.value.response.status_code == 404
    for call in (lambda: client.get_metrics("nope"), lambda: client.wait("nope"), lambda: client.get_sweep("nope")):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(NotFound):
        client.get_model("no-such-alias")


def test_get_model_evaluation_by_alias_or_id(client: Client, trained: JobPublic) -> None:
    evaluation = client.get_model_evaluation("production")
    assert evaluation.model_id == trained.model_id and evaluation.split == "test"
    assert evaluation.accuracy == client.get_model("production").test_acc
    assert [scores.class_id for scores in evaluation.per_class] == list(range(10))
    with pytest.raises(ModelNotFound):
        client.get_model_evaluation("no-such-alias")


def test_get_model_card_by_alias_or_id(client: Client, trained: JobPublic) -> None:
    assert trained.model_id is not None
    card = client.get_model_card("production")
    assert card == client.get_model_card(trained.model_id)
    model = client.get_model(trained.model_id)
    assert (card.model_id, card.summary, card.spec, card.parameters) == (
        model.id,
        model.summary,
        model.spec,
        model.parameters,
    )
    assert card.kept_epoch.reason == "last" and card.kept_epoch.epoch == trained.progress.epochs
    assert card.evaluation == client.get_model_evaluation(trained.model_id)
    assert card.lineage.job_id == trained.id and card.lineage.attempts == trained.attempt
    assert card.provenance.seed == trained.seed and card.provenance.device == "cpu"
    assert trained.provenance is not None and card.provenance.data_sha256 == trained.provenance["data_sha256"]
    assert card.input_contract.height == card.input_contract.width == 28
    assert card.known_limits.uploads[0].upload == "the test tensors themselves"
    with pytest.raises(ModelNotFound):
        client.get_model_card("no-such-alias")


def test_an_id_with_a_slash_stays_one_path_segment(client: Client) -> None:
    with pytest.raises(NotFound):  # not GET /v1/models, which would answer 200
        client.get_job("../models")


def test_keys_missing_unknown_or_without_the_scope(live: Live) -> None:
    with Client(live.url) as anonymous, pytest.raises(Unauthorized, match="Authorization: Bearer"):
        anonymous.list_jobs()
    with Client(live.url, api_key="wrong") as stranger, pytest.raises(Unauthorized, match="not known"):
        stranger.submit(TINY)
    with Client(live.url, api_key=live.predict_key) as predictor:
        with pytest.raises(Forbidden, match="lacks the `train` scope") as caught:
            predictor.submit(TINY)
        assert caught.value.status == 403
        assert predictor.list_models().count >= 0  # reading models is `predict`'s


def test_an_unreachable_server() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as nowhere:
        with pytest.raises(ServerUnreachable, match="no answer from") as caught:
            nowhere.list_jobs()
        assert isinstance(caught.value, ConnectionError)
        with pytest.raises(ServerUnreachable):
            nowhere.wait("anything", timeout=5)


# -- predictions ------------------------------------------------------------------------------------


def test_predict_accepts_paths_bytes_pil_images_and_arrays_in_order(
    client: Client, trained: JobPublic, tmp_path: Path
) -> None:
    images = [garment(2 + 2 * label) for label in range(4)]
    path = tmp_path / "garment.png"
    path.write_bytes(png(images[0]))

    single = client.predict(path)
    assert single.model_id == trained.model_id and len(single.predictions) == 1
    assert single.predictions[0].filename == "garment.png" and single.failed == 0
    for same, filename in (
        (png(images[0]), "image"),
        (str(path), "garment.png"),
        (Image.fromarray(images[0]), "image.png"),
    ):
        (prediction,) = client.predict(same).predictions
        assert prediction == single.predictions[0].model_copy(update={"filename": filename})

    # 28x28 arrays go to the pixels route as they are; a stack is several images.
    each = [client.predict(image, top_k=5).predictions[0] for image in images]
    assert outcomes(client.predict(np.stack(images), top_k=5).predictions) == outcomes(each)
    assert outcomes(client.predict(images[1].astype(np.float32) / 255).predictions) == outcomes([each[1]])

    mixed = client.predict([images[2], path, images[3], png(images[0])], model="production")
    assert mixed.model_id == trained.model_id
    assert outcomes(mixed.predictions) == outcomes([each[2], single.predictions[0], each[3], single.predictions[0]])
    assert [len(p.top_k) for p in mixed.predictions if isinstance(p, PredictionPublic)] == [3, 3, 3, 3]


def outcomes(predictions: Sequence[PredictionPublic | PredictionFailedPublic]) -> list[tuple[int, object]]:
    """Class and probability: equal whatever batch an image was computed in (to float rounding)."""
    assert all(isinstance(p, PredictionPublic) for p in predictions), predictions
    return [
        (p.class_id, pytest.approx(p.probability, abs=1e-5)) for p in predictions if isinstance(p, PredictionPublic)
    ]


def test_predict_returns_every_image_s_entry_good_or_bad(client: Client, trained: JobPublic, tmp_path: Path) -> None:
    images = [garment(2 + 2 * label) for label in range(3)]
    good = tmp_path / "good.png"
    good.write_bytes(png(images[0]))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png(images[1])[:60])
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not a picture")

    # The arrays go to the pixels route, the rest in one upload: the server numbers those 0-4.
    result = client.predict([good, b"", images[1], truncated, png(images[2]), notes], top_k=5)
    assert result.model_id == trained.model_id and result.failed == 3
    assert [item.index for item in result.predictions] == [0, 1, 2, 3, 4, 5]
    assert [type(item) for item in result.predictions] == [PredictionPublic, PredictionFailedPublic] * 3
    failures = [item for item in result.predictions if isinstance(item, PredictionFailedPublic)]
    assert [(item.filename, item.error.status, item.error.type) for item in failures] == [
        ("image", 400, "empty_image"),
        ("truncated.png", 400, "corrupt_image"),
        ("notes.txt", 415, "unsupported_image"),
    ]
    # Renumbered: the detail names each image by its place in the whole call.
    assert [item.error.detail.split(":")[0] for item in failures] == [
        "file 1 ('image')",
        "file 3 ('truncated.png')",
        "file 5 ('notes.txt')",
    ]
    each = [client.predict(image, top_k=5).predictions[0] for image in (good, images[1], png(images[2]))]
    predicted = [item for item in result.predictions if isinstance(item, PredictionPublic)]
    assert outcomes(predicted) == outcomes(each)
    assert [item.filename for item in predicted] == ["good.png", None, "image"]  # pixel arrays have no filename


def test_predict_returns_the_entries_when_no_image_could_be_used(client: Client, trained: JobPublic) -> None:
    result = client.predict([b"", b"not an image"])
    assert result.failed == 2 and result.model_id == trained.model_id
    assert [item.error.status for item in result.predictions if isinstance(item, PredictionFailedPublic)] == [400, 415]


def test_indexes_stay_global_when_the_images_take_several_requests(
    client: Client, trained: JobPublic, transport: RecordingTransport
) -> None:
    good = png(garment(6))
    uploads = [good] * (FILES_PER_REQUEST + 2)
    bad = {5: b"", FILES_PER_REQUEST: b"not an image", FILES_PER_REQUEST + 1: good[:60]}
    for index, data in bad.items():
        uploads[index] = data
    transport.exchanges.clear()
    result = client.predict(uploads)
    # The second request held only bad images: its error answer carried their entries, which the client returns.
    assert [path for path, _ in transport.exchanges] == ["/v1/predict", "/v1/predict"]
    assert transport.exchanges[1][1] == 415
    assert result.failed == 3 and len(result.predictions) == FILES_PER_REQUEST + 2
    assert [item.index for item in result.predictions] == list(range(FILES_PER_REQUEST + 2))
    failed = {item.index: item.error for item in result.predictions if isinstance(item, PredictionFailedPublic)}
    assert sorted(failed) == sorted(bad)
    for index, error in failed.items():
        assert error.detail.startswith(f"file {index} ('image'): "), error.detail


def test_predict_errors(client: Client, trained: JobPublic) -> None:
    with pytest.raises(NotFound):
        client.predict(garment(4), model="no-such-model")
    with pytest.raises(InvalidRequest) as invalid:
        client.predict(garment(4), top_k=11)
    assert invalid.value.errors[0]["loc"] == ["query", "top_k"]
    with pytest.raises(TypeError, match="cannot send"):
        client.predict(object())
    with pytest.raises(ValueError, match="no image"):
        client.predict([])


# -- models, aliases, sweeps ------------------------------------------------------------------------


def test_models_and_aliases(client: Client, trained: JobPublic) -> None:
    assert trained.model_id is not None
    models = client.list_models()
    assert trained.model_id in {m.id for m in models.models}
    model = client.get_model("production")
    assert model.id == trained.model_id and "production" in model.aliases

    alias = client.set_alias("staging", trained.model_id)
    assert alias.name == "staging" and alias.model_id == trained.model_id
    assert {a.name for a in client.list_aliases()} >= {"production", "staging"}
    assert client.get_alias("staging").model_id == trained.model_id
    with pytest.raises(Conflict, match="alias"):
        client.delete_model(trained.model_id)
    client.delete_alias("staging")
    with pytest.raises(NotFound):
        client.get_alias("staging")
    with pytest.raises(InvalidRequest):
        client.set_alias("Not An Alias", trained.model_id)


def test_download_writes_the_checkpoint(client: Client, trained: JobPublic, tmp_path: Path) -> None:
    assert trained.model_id is not None
    saved = client.download_model(trained.model_id, tmp_path / "model.safetensors")
    assert saved.stat().st_size == client.get_model(trained.model_id).size_bytes


def test_sweeps_submit_wait_list_and_cancel(client: Client) -> None:
    sweep = client.submit_sweep({"lr": [0.05, 0.2]}, base={**TINY, "epochs": 2}, idempotency_key="sweep-1")
    assert len(sweep.jobs) == 2 and sweep.grid == {"lr": [0.05, 0.2]}
    counts: list[dict[str, int]] = []
    done = client.wait_sweep(sweep.id, on_change=lambda s: counts.append(s.counts), poll_interval=0.1, timeout=60)
    assert all(job.status is JobStatus.succeeded for job in done.jobs)
    assert counts and counts[-1].get("succeeded") == 2
    assert sweep.id in {s.id for s in client.list_sweeps(limit=100).data}
    assert client.get_sweep(sweep.id).id == sweep.id

    pending = client.submit_sweep({"hidden_layers": [[8], [16]]}, base=LONG)
    cancelled = client.cancel_sweep(pending.id)
    assert {job.status for job in client.wait_sweep(cancelled.id, timeout=60).jobs} == {JobStatus.cancelled}
