"""service/jobs/tracking.py: tags and notes merged onto jobs (any status, concurrent updates), jobs compared."""

from __future__ import annotations

import threading

import pytest

from models.training import EpochMetrics
from service.errors import JobNotFound, TooManyTags
from service.jobs import queue, tracking
from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.jobs.tracking import KEEP, MAX_TAGS, label_job, merged_tags
from service.schemas import MAX_TAGS as DOCUMENTED_MAX_TAGS
from service.store.db import Database
from tests.support.jobs import add_job
from tests.support.specs import spec_of

pytestmark = pytest.mark.db


@pytest.mark.parametrize(
    ("current", "changes", "merged"),
    [
        (None, {"team": "vision"}, {"team": "vision"}),
        ({"team": "vision", "x": "1"}, {"x": None}, {"team": "vision"}),
        ({"team": "vision"}, {"team": "speech", "owner": "ana"}, {"team": "speech", "owner": "ana"}),
        ({"team": "vision"}, {"absent": None}, {"team": "vision"}),
        ({"team": "vision"}, {}, {"team": "vision"}),
        ({"team": "vision"}, None, {}),
        ({"flag": "x"}, {"flag": ""}, {"flag": ""}),
    ],
)
def test_tags_merge_as_a_json_merge_patch(
    current: dict[str, str] | None, changes: dict[str, str | None] | None, merged: dict[str, str]
) -> None:
    assert merged_tags(current, changes) == merged


def test_label_merges_tags_and_replaces_or_clears_the_note(db: Database) -> None:
    job_id = add_job(db)
    job = label_job(db, job_id, tags={"team": "vision", "x": "1"}, note="first try")
    assert (job.tags, job.note) == ({"team": "vision", "x": "1"}, "first try")
    job = label_job(db, job_id, tags={"x": None, "owner": "ana"})
    assert (job.tags, job.note) == ({"owner": "ana", "team": "vision"}, "first try"), "the note stays"
    job = label_job(db, job_id, note="second")
    assert (job.tags, job.note) == ({"owner": "ana", "team": "vision"}, "second"), "the tags stay"
    job = label_job(db, job_id, note=None)
    assert job.note is None
    job = label_job(db, job_id, tags=None)
    assert job.tags is None, "no tags: SQL NULL, as a job that never had any"
    stored = get_job(db, job_id)
    assert (stored.tags, stored.note) == (None, None)
    assert label_job(db, job_id).tags is None, "nothing to change: nothing changes"


@pytest.mark.parametrize("status", list(JobStatus))
def test_any_job_can_be_labelled_and_keeps_its_status_and_updated_at(db: Database, status: JobStatus) -> None:
    job_id = add_job(db, status=status)
    before = get_job(db, job_id)
    job = label_job(db, job_id, tags={"k": "v"}, note="n")
    assert job.status is status and job.updated_at == before.updated_at
    assert job.tags == {"k": "v"}


def test_at_most_32_tags_after_the_merge(db: Database) -> None:
    assert MAX_TAGS == DOCUMENTED_MAX_TAGS == 32
    job_id = add_job(db)
    label_job(db, job_id, tags={f"k{i}": "v" for i in range(MAX_TAGS)})
    with pytest.raises(TooManyTags, match="at most 32 tags; this update would leave it 33") as raised:
        label_job(db, job_id, tags={"one_more": "v"})
    assert raised.value.errors[0]["loc"] == ["body", "tags"]
    assert len(get_job(db, job_id).tags or {}) == MAX_TAGS, "refused whole"
    # Removing one and adding one in the same update fits.
    job = label_job(db, job_id, tags={"k0": None, "one_more": "v"})
    assert len(job.tags or {}) == MAX_TAGS and "one_more" in (job.tags or {})


def test_unknown_jobs_are_not_found(db: Database) -> None:
    for job_id in ("nope", "a\x00b"):
        with pytest.raises(JobNotFound):
            label_job(db, job_id, note="x")


def test_updates_at_once_each_count(db: Database) -> None:
    """Each update merges into the tags the previous one left: the row lock (PostgreSQL) or BEGIN IMMEDIATE
    (SQLite) serialises them, so no update's tag is lost to another's read-modify-write."""
    job_id = add_job(db)
    errors: list[BaseException] = []

    def tag(number: int) -> None:
        try:
            label_job(db, job_id, tags={f"t{number}": str(number)})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=tag, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert get_job(db, job_id).tags == {f"t{number}": str(number) for number in range(16)}


def test_the_queue_s_writes_leave_the_labels_alone(db: Database) -> None:
    job = queue.enqueue_job(db, spec_of(hidden_layers=[8], epochs=2), max_attempts=3)
    label_job(db, job.id, tags={"team": "vision"}, note="n")
    claim = queue.claim_next_job(db, "w", 30, device="cpu")
    assert claim is not None
    metrics = EpochMetrics(epoch=1, train_loss=1.0, train_acc=0.5, test_acc=0.6, seconds=0.1)
    queue.record_epoch(db, claim, metrics)
    queue.fail_job(db, claim, "boom")
    stored = get_job(db, job.id)
    assert (stored.status, stored.tags, stored.note, stored.test_acc) == (
        JobStatus.failed,
        {"team": "vision"},
        "n",
        0.6,
    )


def test_keep_is_the_default() -> None:
    assert repr(KEEP) == "KEEP"


# -- comparisons ----------------------------------------------------------------------------------------


def run(db: Database, spec_fields: dict[str, object], curve: list[tuple[float, float | None]]) -> str:
    """A job that recorded ``curve`` (test_acc, val_acc per epoch) and failed: no training."""
    job = queue.enqueue_job(db, spec_of(**spec_fields), max_attempts=1)
    claim = queue.claim_next_job(db, "w", 30, device="cpu")
    assert claim is not None and claim.job_id == job.id
    for epoch, (test_acc, val_acc) in enumerate(curve, start=1):
        metrics = EpochMetrics(
            epoch=epoch, train_loss=1.0, train_acc=0.5, test_acc=test_acc, val_acc=val_acc, seconds=1
        )
        queue.record_epoch(db, claim, metrics)
    queue.fail_job(db, claim, "stopped")
    return job.id


def test_compare_lists_what_differs_and_the_final_and_best_epochs(db: Database) -> None:
    common = {"hidden_layers": [8], "epochs": 3, "seed": 1}
    a = run(db, {**common, "lr": 0.1, "val_fraction": 0.1}, [(0.5, 0.4), (0.7, 0.8), (0.6, 0.8)])
    b = run(db, {**common, "lr": 0.2, "val_fraction": 0.1}, [(0.9, 0.3)])
    c = add_job(db, spec_of(**common, lr=0.1, val_fraction=0.1, optimizer="adam"))
    comparison = tracking.compare_jobs(db, [b, a, c, a])
    assert comparison.fields == ["optimizer", "lr"], "in the spec's order; the seed is the same"
    assert [compared.job.id for compared in comparison.runs] == [b, a, c]
    by_id = {compared.job.id: compared for compared in comparison.runs}
    assert by_id[a].params == {"optimizer": "sgd", "lr": 0.1}
    final, best_test, best_val = by_id[a].final, by_id[a].best_test, by_id[a].best_val
    assert final is not None and final.epoch == 3
    assert best_test is not None and best_test.epoch == 2
    assert best_val is not None and best_val.epoch == 2, "the earliest of equals"
    assert by_id[c].final is None and by_id[c].best_test is None


def test_compare_without_validation_has_no_best_validation_epoch_and_names_the_run_seed(db: Database) -> None:
    a = run(db, {"hidden_layers": [8], "epochs": 1}, [(0.5, None)])
    b = run(db, {"hidden_layers": [8], "epochs": 1}, [(0.6, None)])
    comparison = tracking.compare_jobs(db, [a, b])
    assert comparison.fields == ["seed"], "drawn seeds differ"
    assert all(compared.best_val is None and compared.best_test is not None for compared in comparison.runs)
    alone = tracking.compare_jobs(db, [a])
    assert alone.fields == [] and alone.runs[0].params == {}


def test_compare_names_every_unknown_job(db: Database) -> None:
    known = add_job(db)
    with pytest.raises(JobNotFound, match="'nope', 'a\\\\x00b'"):
        tracking.compare_jobs(db, ["nope", known, "a\x00b"])
