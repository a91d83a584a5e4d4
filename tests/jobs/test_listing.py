"""service/jobs/listing.py: filters, the four orders (missing values, ties), keyset cursors against offsets.

Every test runs on SQLite and, in the `-m db` pass, on PostgreSQL: the same rows must give the same pages.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from sqlalchemy import update

from models.spec import SpecFields, TrainingSpec
from service.errors import InvalidCursor
from service.jobs import listing, queue
from service.jobs.listing import JobFilters, JobOrder, TagFilter, list_jobs
from service.jobs.status import JobStatus, StudyStatus
from service.schemas import JobSort
from service.store.db import Database
from service.store.tables import Job, Study
from tests.support.jobs import SMALL, add_job
from tests.support.specs import spec_of

pytestmark = pytest.mark.db

SORTS = [f"{sign}{column}" for column in listing.SORT_COLUMNS for sign in ("", "-")]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


EVERY_JOB = JobFilters()


def ids(db: Database, filters: JobFilters = EVERY_JOB, sort: str = "-created_at", **options: Any) -> list[str]:
    return [job.id for job in list_jobs(db, filters, JobOrder.parse(sort), limit=500, **options).jobs]


def expected_order(rows: list[dict[str, Any]], sort: str) -> list[str]:
    """The documented order, computed here: by (value, id), descending with '-', jobs without a value last by id."""
    column, descending = sort.removeprefix("-"), sort.startswith("-")
    valued = sorted((row for row in rows if row[column] is not None), key=lambda row: (row[column], row["id"]))
    missing = sorted((row for row in rows if row[column] is None), key=lambda row: row["id"])
    if descending:
        valued.reverse()
        missing.reverse()
    return [row["id"] for row in valued + missing]


def pages(db: Database, sort: str, size: int, filters: JobFilters = EVERY_JOB) -> list[list[str]]:
    """Every page, following the cursors."""
    order, found, cursor = JobOrder.parse(sort), [], None
    while True:
        page = list_jobs(db, filters, order, limit=size, cursor=cursor, count=False)
        found.append([job.id for job in page.jobs])
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


@pytest.fixture
def crowd(db: Database) -> list[dict[str, Any]]:
    """45 jobs whose sort values repeat a lot (5 creation times, 3 or 4 values per metric, missing ones)."""
    rng = random.Random(7)
    rows = []
    for number in range(45):
        row = {
            "created_at": T0 + timedelta(seconds=number % 5),
            "test_acc": rng.choice([None, 0.5, 0.7, 0.9]),
            "val_acc": rng.choice([None, 0.6, 0.8]),
            "train_seconds": rng.choice([None, 1.0, 2.5]),
        }
        row["id"] = add_job(db, **row)
        rows.append(row)
    return rows


# -- orders and pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sort", SORTS)
def test_each_order_is_by_value_then_id_with_missing_values_last(
    db: Database, crowd: list[dict[str, Any]], sort: str
) -> None:
    assert ids(db, sort=sort) == expected_order(crowd, sort)


@pytest.mark.parametrize(("sort", "size"), [(sort, size) for sort in SORTS for size in (1, 4, 7)])
def test_cursor_pages_neither_skip_nor_repeat_through_ties_and_missing_values(
    db: Database, crowd: list[dict[str, Any]], sort: str, size: int
) -> None:
    found = pages(db, sort, size)
    assert all(len(page) == size for page in found[:-1]) and 1 <= len(found[-1]) <= size
    assert list(itertools.chain(*found)) == expected_order(crowd, sort)


@pytest.mark.parametrize("sort", SORTS)
def test_offset_pages_give_the_same_order(db: Database, crowd: list[dict[str, Any]], sort: str) -> None:
    order = JobOrder.parse(sort)
    by_offset = [
        job.id
        for offset in range(0, 50, 6)
        for job in list_jobs(db, JobFilters(), order, limit=6, offset=offset, count=False).jobs
    ]
    assert by_offset == expected_order(crowd, sort)


def test_the_default_order_is_newest_first_as_before(db: Database) -> None:
    first, second = add_job(db), add_job(db)
    assert ids(db) == [second, first]
    assert list_jobs(db).jobs[0].id == second


def test_an_offset_page_can_be_continued_by_its_cursor(db: Database, crowd: list[dict[str, Any]]) -> None:
    order = JobOrder.parse("-test_acc")
    page = list_jobs(db, JobFilters(), order, limit=10, offset=20)
    rest = list_jobs(db, JobFilters(), order, limit=500, cursor=page.next_cursor)
    assert [job.id for job in [*page.jobs, *rest.jobs]] == expected_order(crowd, "-test_acc")[20:]


def test_the_last_page_has_no_cursor_and_count_is_all_matching_jobs(db: Database, crowd: list[dict[str, Any]]) -> None:
    full = list_jobs(db, limit=45)
    assert full.next_cursor is None and full.count == 45
    assert list_jobs(db, limit=44).next_cursor is not None
    assert list_jobs(db, limit=44, count=False).count is None
    acc = JobFilters(min_test_acc=0.6)
    assert list_jobs(db, acc, limit=1).count == sum(
        row["test_acc"] is not None and row["test_acc"] >= 0.6 for row in crowd
    )


@pytest.mark.parametrize("sort", ["-created_at", "-test_acc", "train_seconds"])
def test_jobs_added_while_paging_do_not_make_the_pages_repeat_or_skip(db: Database, sort: str) -> None:
    before = [add_job(db, created_at=T0, test_acc=0.5, train_seconds=1.0) for _ in range(12)]
    order, seen, cursor = JobOrder.parse(sort), [], None
    while True:
        page = list_jobs(db, JobFilters(), order, limit=3, cursor=cursor, count=False)
        seen += [job.id for job in page.jobs]
        # New jobs tied with the old ones, and newer ones: some land behind the cursor, some ahead of it.
        add_job(db, created_at=T0, test_acc=0.5, train_seconds=1.0)
        add_job(db, created_at=T0 + timedelta(hours=1), test_acc=0.5)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)), "a job came twice"
    assert set(before) <= set(seen), "a job was skipped"


# -- filters -------------------------------------------------------------------------------------------


def test_status_sweep_and_study_filters(db: Database) -> None:
    cancelled = add_job(db, status=JobStatus.cancelled)
    sweep, swept, _ = queue.enqueue_sweep(db, {}, {"lr": [0.1, 0.2]}, [SMALL, SMALL], max_attempts=3)
    with db.write() as session:
        session.add(
            Study(
                id="s1",
                status=StudyStatus.running,
                base={},
                space={},
                sampler={},
                pruner={},
                n_trials=1,
                max_concurrent=1,
                seed=1,
                max_attempts=1,
                created_at=T0,
            )
        )
    trial = add_job(db, study_id="s1")
    assert ids(db, JobFilters(status=JobStatus.cancelled)) == [cancelled]
    assert set(ids(db, JobFilters(sweep_id=sweep.id))) == {job.id for job in swept}
    assert ids(db, JobFilters(study_id="s1")) == [trial]
    assert ids(db, JobFilters(study_id="s1", status=JobStatus.cancelled)) == []
    assert ids(db, JobFilters(sweep_id="nope")) == [] and ids(db, JobFilters(sweep_id="a\x00b")) == []


def test_accuracy_bounds_are_inclusive_and_leave_out_jobs_without_one(db: Database) -> None:
    low, high, none = add_job(db, test_acc=0.5, val_acc=0.7), add_job(db, test_acc=0.9, val_acc=0.6), add_job(db)
    assert ids(db, JobFilters(min_test_acc=0.5)) == [high, low]
    assert ids(db, JobFilters(min_test_acc=0.51)) == [high]
    assert ids(db, JobFilters(max_test_acc=0.5)) == [low]
    assert ids(db, JobFilters(min_val_acc=0.65, max_val_acc=0.7)) == [low]
    assert ids(db, JobFilters(min_test_acc=0.9, max_test_acc=0.5)) == []
    assert none in ids(db) and none not in ids(db, JobFilters(min_test_acc=0.0))


def test_tag_filters_all_must_hold(db: Database) -> None:
    vision = add_job(db, tags={"team": "vision"})
    speech = add_job(db, tags={"team": "speech", "x.y": "1"})
    owned = add_job(db, tags={"team": "vision", "owner": "ana"})
    flagged = add_job(db, tags={"flag": ""})
    add_job(db)

    def tagged(*texts: str) -> set[str]:
        return set(ids(db, JobFilters(tags=[TagFilter.parse(text) for text in texts])))

    assert tagged("team:vision") == {vision, owned}
    assert tagged("team") == {vision, speech, owned}
    assert tagged("team:vision", "owner") == {owned}
    assert tagged("team:vision", "owner:bob") == set()
    assert tagged("x.y:1") == {speech} and tagged("x") == set()
    assert tagged("flag:") == {flagged} and tagged("flag") == {flagged} and tagged("team:") == set()
    assert tagged("Team:vision") == set(), "keys are case-sensitive"


@pytest.mark.parametrize(
    "value",
    ["' OR '1'='1", "vision' --", '"; DROP TABLE jobs; --', "%", "_", "\\", '"', "$.team", "a:b:c", "vi%on", "'"],
)
def test_injection_looking_tag_values_are_only_values(db: Database, value: str) -> None:
    exact = add_job(db, tags={"team": value})
    add_job(db, tags={"team": "vision"})
    assert ids(db, JobFilters(tags=[TagFilter.parse(f"team:{value}")])) == [exact]
    assert ids(db, JobFilters(tags=[TagFilter("team", value + "x")])) == []
    assert len(ids(db)) == 2


# A value for every spec field that the default spec does not have (with what the spec needs beside it).
SPEC_CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "hidden_layers": ([128, 64], {}),
    "activation": ("tanh", {}),
    "init": ("xavier", {}),
    "init_std": (0.05, {}),
    "dropout": (0.25, {}),
    "normalize_inputs": (True, {}),
    "optimizer": ("adam", {}),
    "lr": (0.30000000000000004, {}),
    "momentum": (0.9, {}),
    "nesterov": (True, {"momentum": 0.9}),
    "weight_decay": (1e-05, {}),
    "lr_schedule": ("cosine", {}),
    "step_epochs": (5, {}),
    "gamma": (0.5, {}),
    "warmup_epochs": (1.5, {}),
    "label_smoothing": (0.1, {}),
    "hflip": (True, {}),
    "max_shift": (2, {}),
    "batch_size": (128, {}),
    "epochs": (3, {}),
    "val_fraction": (0.1, {}),
    "early_stopping_patience": (2, {"val_fraction": 0.1}),
    "max_seconds": (60.0, {}),
    "seed": (1234, {}),
}


def test_every_spec_field_has_a_filter_case() -> None:
    assert SPEC_CASES.keys() == SpecFields.model_fields.keys()


@pytest.mark.parametrize("name", SPEC_CASES)
def test_each_spec_field_filters_by_its_own_type(db: Database, name: str) -> None:
    value, beside = SPEC_CASES[name]
    special = add_job(db, spec_of(**{**beside, name: value}))
    plain = add_job(db, TrainingSpec())
    assert ids(db, JobFilters(spec={name: value})) == [special]
    default = SpecFields.model_fields[name].default
    if default is not None:
        assert plain in ids(db, JobFilters(spec={name: default}))
        assert special not in ids(db, JobFilters(spec={name: default}))


def test_layer_widths_match_as_a_whole_list(db: Database) -> None:
    jobs = {tuple(widths): add_job(db, TrainingSpec(hidden_layers=widths)) for widths in ([], [256], [256, 128])}
    for widths, job_id in jobs.items():
        assert ids(db, JobFilters(spec={"hidden_layers": list(widths)})) == [job_id]
    assert ids(db, JobFilters(spec={"hidden_layers": [128]})) == []
    assert ids(db, JobFilters(spec={"hidden_layers": [256, 128, 64]})) == []


def test_floats_match_exactly_on_both_databases(db: Database) -> None:
    values = [0.1, 0.3, 0.30000000000000004, 1e-05, 0.0003, 1 / 3, 2.5e-07, 0.1 + 2**-56]
    jobs = {value: add_job(db, TrainingSpec(lr=value)) for value in values}
    for value, job_id in jobs.items():
        assert ids(db, JobFilters(spec={"lr": value})) == [job_id], value
    assert ids(db, JobFilters(spec={"lr": 0.2})) == []
    assert ids(db, JobFilters(spec={"lr": 1})) == [], "an integer is compared as the float it is"


def test_filters_combine_with_sorts_and_cursors(db: Database) -> None:
    adam = [
        add_job(db, TrainingSpec(optimizer="adam"), test_acc=acc, tags={"team": "vision"}) for acc in (0.8, 0.9, 0.8)
    ]
    add_job(db, test_acc=0.95, tags={"team": "vision"})
    filters = JobFilters(spec={"optimizer": "adam"}, tags=[TagFilter("team", "vision")], min_test_acc=0.8)
    found = list(itertools.chain(*pages(db, "-test_acc", 1, filters)))
    assert found[0] == adam[1] and sorted(found[1:], reverse=True) == found[1:] and set(found) == set(adam)


def test_a_field_missing_from_an_older_spec_counts_as_its_default(db: Database) -> None:
    job_id = add_job(db)
    with db.write() as session:
        old = {k: v for k, v in session.get(Job, job_id).spec.items() if k not in ("lr_schedule", "label_smoothing")}
        session.execute(update(Job).where(Job.id == job_id).values(spec=old))
    assert ids(db, JobFilters(spec={"lr_schedule": "constant", "label_smoothing": 0.0})) == [job_id]
    assert ids(db, JobFilters(spec={"lr_schedule": "cosine"})) == []


def test_spec_values_that_look_like_sql_are_only_values(db: Database) -> None:
    add_job(db)
    for value in ("adam' OR '1'='1", "sgd'; --", "%"):
        assert ids(db, JobFilters(spec={"optimizer": value})) == []
    with pytest.raises(ValueError, match="no spec field"):
        listing.spec_condition("optimiser", "adam")


# -- cursors that do not fit ----------------------------------------------------------------------------


def raw(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.fixture
def cursor(db: Database) -> str:
    """The first page's cursor of the jobs by test accuracy, descending."""
    for acc in (0.5, 0.6, 0.7):
        add_job(db, test_acc=acc)
    next_cursor = list_jobs(db, JobFilters(), JobOrder.parse("-test_acc"), limit=1).next_cursor
    assert next_cursor is not None
    return next_cursor


@pytest.mark.parametrize(
    ("sort", "filters", "message"),
    [
        ("test_acc", JobFilters(), "sorted by '-test_acc', not 'test_acc'"),
        ("-created_at", JobFilters(), "sorted by '-test_acc'"),
        ("-test_acc", JobFilters(status=JobStatus.queued), "other filters"),
        ("-test_acc", JobFilters(spec={"lr": 0.1}), "other filters"),
    ],
)
def test_a_cursor_continues_only_its_own_listing(
    db: Database, cursor: str, sort: str, filters: JobFilters, message: str
) -> None:
    with pytest.raises(InvalidCursor, match=message) as raised:
        list_jobs(db, filters, JobOrder.parse(sort), cursor=cursor)
    assert raised.value.errors[0]["loc"] == ["query", "cursor"]


def test_a_cursor_and_an_offset_together_are_refused(db: Database, cursor: str) -> None:
    with pytest.raises(InvalidCursor, match="not both"):
        list_jobs(db, JobFilters(), JobOrder.parse("-test_acc"), cursor=cursor, offset=1)


def test_the_digest_ignores_the_order_filters_were_given_in() -> None:
    one = JobFilters(tags=[TagFilter("a", "1"), TagFilter("a")], spec={"lr": 0.1, "optimizer": "sgd"})
    other = JobFilters(tags=[TagFilter("a"), TagFilter("a", "1"), TagFilter("a")], spec={"optimizer": "sgd", "lr": 0.1})
    assert one.digest() == other.digest() != JobFilters().digest()
    assert JobFilters(tags=[TagFilter("a", "")]).digest() != JobFilters(tags=[TagFilter("a")]).digest()


DIGEST = JobFilters().digest()


@pytest.mark.parametrize(
    ("sort", "text"),
    [
        ("-test_acc", "abc"),
        ("-test_acc", "!!!"),
        ("-test_acc", ""),
        ("-test_acc", base64.urlsafe_b64encode(b"\xff\xfe").decode()),
        ("-test_acc", raw({"a": 1})),
        ("-test_acc", raw([1, "-test_acc", DIGEST, 0.5])),
        ("-test_acc", raw([2, "-test_acc", DIGEST, 0.5, "x"])),
        ("-test_acc", raw([1, "-test_acc", DIGEST, "0.5", "x"])),
        ("-test_acc", raw([1, "-test_acc", DIGEST, True, "x"])),
        ("-test_acc", raw([1, "-test_acc", DIGEST, 10**400, "x"])),
        ("-test_acc", base64.urlsafe_b64encode(f'[1,"-test_acc","{DIGEST}",NaN,"x"]'.encode()).decode()),
        ("-test_acc", raw([1, "-test_acc", DIGEST, 0.5, ""])),
        ("-test_acc", raw([1, "-test_acc", DIGEST, 0.5, 7])),
        ("-test_acc", raw([1, "-test_acc", DIGEST, 0.5, "a\x00b"])),
        ("-test_acc", raw([1, "-test_acc", DIGEST, 0.5, "\ud800"])),  # a lone surrogate: no driver sends it
        ("-created_at", raw([1, "-created_at", DIGEST, "yesterday", "x"])),
        ("-created_at", raw([1, "-created_at", DIGEST, "2026-01-01T00:00:00", "x"])),  # no time zone
        ("-created_at", raw([1, "-created_at", DIGEST, "0001-01-01T00:00:00+01:00", "x"])),  # before year 1 in UTC
        ("-created_at", raw([1, "-created_at", DIGEST, None, "x"])),
    ],
)
def test_a_garbled_cursor_is_invalid_never_an_error(db: Database, sort: str, text: str) -> None:
    add_job(db, test_acc=0.5)
    with pytest.raises(InvalidCursor):
        list_jobs(db, JobFilters(), JobOrder.parse(sort), cursor=text)


def test_a_cursor_at_a_job_without_a_value_continues_among_those(db: Database) -> None:
    rows = [{"id": add_job(db, test_acc=acc), "test_acc": acc} for acc in (None, None, None, 0.5)]
    order = JobOrder.parse("test_acc")
    second = list_jobs(db, JobFilters(), order, limit=2)
    position = listing.Position.decode(second.next_cursor or "", order, JobFilters().digest())
    assert position.value is None
    rest = list_jobs(db, JobFilters(), order, limit=5, cursor=second.next_cursor)
    assert [job.id for job in [*second.jobs, *rest.jobs]] == expected_order(rows, "test_acc")


def test_the_documented_sorts_are_the_listing_s() -> None:
    assert set(get_args(JobSort)) == set(SORTS)


def test_unknown_sorts_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot sort on 'spec'"):
        JobOrder.parse("-spec")
    assert str(JobOrder.parse("-val_acc")) == "-val_acc" and JobOrder.parse().descending
