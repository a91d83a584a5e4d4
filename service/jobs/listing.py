"""Job listings: filtered by status, tags, spec fields, accuracy, sweep or study; sorted; paged by cursor.

**Order.** By ``created_at``, ``test_acc``, ``val_acc`` or ``train_seconds``, ``-`` first for descending, and
then by id in the same direction: (value, id) places every job exactly once, however many share a value. Jobs
without the value (no epoch recorded yet) come after all the others in both directions, by id among
themselves (``created_at`` is never missing).

**Pages.** A cursor holds the last job's (value, id), the order, and a digest of the filters; the next page
starts strictly after that job, so a page costs the same however deep it is, and jobs added meanwhile
never make the listing repeat or skip one (a job whose accuracy changes meanwhile, a running one, may move
across the cursor: it is then listed twice or not at all). A page is at most two index range scans on (value, id):
the jobs that have the value, from the cursor on, then, if the page is not full, those without it. An
``offset`` (kept for compatibility) walks the same index over the rows it skips, which costs more the
deeper it goes.

**Spec filters, the same on SQLite and PostgreSQL.** The spec is a JSON column, and the two databases
disagree on JSON: PostgreSQL's ``json`` has no equality operator and returns a document's text as it was
written, SQLite compares JSON as text and returns arrays re-serialised without spaces. So nothing here
compares JSON. Each filtered field is extracted as one SQL scalar (``->>`` on PostgreSQL, ``json_extract``
on SQLite) and cast to its field's type (text, integer, double, boolean), and compared with a bound value of
that type: both databases compare integers, doubles (the same IEEE values: Python writes the shortest text
that reads back as the same double, and both parse it exactly), booleans and strings alike. A list (the
hidden layers) is compared element by element as integers, plus "no element after the last": widths
``[256]`` match ``[256]`` but neither ``[256, 128]`` nor ``[]``. A field missing from an older spec counts as
its default, as the job's spec reads. Every value and JSON path is a bound parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from sqlalchemy import ColumnElement, and_, false, func, literal, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from models.spec import SpecFields
from service.errors import InvalidCursor
from service.jobs.status import JobStatus
from service.store.db import Database, valid_key
from service.store.tables import Job

SORT_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    "created_at": Job.created_at,
    "test_acc": Job.test_acc,
    "val_acc": Job.val_acc,
    "train_seconds": Job.train_seconds,
}
NULLABLE_SORTS = {"test_acc", "val_acc", "train_seconds"}
DEFAULT_SORT = "-created_at"

CURSOR_VERSION = 1


@dataclass(frozen=True)
class JobOrder:
    """A listing's order: a sort column, ascending or descending; ties by id in the same direction."""

    column: str
    descending: bool

    @classmethod
    def parse(cls, text: str = DEFAULT_SORT) -> JobOrder:
        """``created_at``, ``-test_acc``...; ValueError for a column that cannot be sorted on."""
        name = text.removeprefix("-")
        if name not in SORT_COLUMNS:
            raise ValueError(f"cannot sort on {name!r}: use one of {', '.join(SORT_COLUMNS)}, '-' first to descend")
        return cls(name, text.startswith("-"))

    def __str__(self) -> str:
        return ("-" if self.descending else "") + self.column

    @property
    def nullable(self) -> bool:
        return self.column in NULLABLE_SORTS

    @property
    def key(self) -> InstrumentedAttribute[Any]:
        return SORT_COLUMNS[self.column]

    def by(self, *columns: Any) -> list[Any]:
        return [column.desc() if self.descending else column.asc() for column in columns]


@dataclass(frozen=True)
class TagFilter:
    """``key:value``: the tag has this value; ``key`` alone: the job has the tag, whatever its value."""

    key: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> TagFilter:
        key, colon, value = text.partition(":")
        return cls(key, value if colon else None)

    def condition(self) -> ColumnElement[bool]:
        # Tags are a JSON object of strings; absent (or no tags at all) reads as NULL on both databases.
        found = Job.tags[self.key].as_string()
        return found.is_not(None) if self.value is None else found == self.value


@dataclass(frozen=True)
class JobFilters:
    """What a listing keeps: every condition given must hold (tags: all of them)."""

    status: JobStatus | None = None
    tags: Sequence[TagFilter] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)
    min_test_acc: float | None = None
    max_test_acc: float | None = None
    min_val_acc: float | None = None
    max_val_acc: float | None = None
    sweep_id: str | None = None
    study_id: str | None = None
    owner: str | None = None  # the API key whose jobs alone are listed (FMNIST_OWNER_ONLY_READS); None: all

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.status is not None:
            found.append(Job.status == self.status)
        found += [tag.condition() for tag in self.tags]
        found += [spec_condition(name, value) for name, value in self.spec.items()]
        bounds = [
            (Job.test_acc, self.min_test_acc, self.max_test_acc),
            (Job.val_acc, self.min_val_acc, self.max_val_acc),
        ]
        for column, low, high in bounds:
            if low is not None:
                found.append(column >= low)
            if high is not None:
                found.append(column <= high)
        for group, key in ((Job.sweep_id, self.sweep_id), (Job.study_id, self.study_id)):
            if key is not None:
                found.append(group == key if valid_key(key) else false())
        if self.owner is not None:
            found.append(Job.owner == self.owner)
        return found

    def digest(self) -> str:
        """A short fingerprint of these filters, which a cursor carries: it continues only the listing it came from."""
        canonical = {
            "status": None if self.status is None else self.status.value,
            "tags": sorted({json.dumps([tag.key, tag.value]) for tag in self.tags}),
            "spec": {name: _plain(value) for name, value in sorted(self.spec.items())},
            "acc": [self.min_test_acc, self.max_test_acc, self.min_val_acc, self.max_val_acc],
            "sweep": self.sweep_id,
            "study": self.study_id,
            "owner": self.owner,
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


NO_FILTERS = JobFilters()
NEWEST_FIRST = JobOrder.parse(DEFAULT_SORT)


@dataclass(frozen=True)
class JobPage:
    jobs: Sequence[Job]
    count: int | None  # None when not asked for
    next_cursor: str | None  # None on the last page


def list_jobs(
    db: Database,
    filters: JobFilters = NO_FILTERS,
    order: JobOrder = NEWEST_FIRST,
    *,
    limit: int = 50,
    offset: int = 0,
    cursor: str | None = None,
    count: bool = True,
) -> JobPage:
    """One page of the jobs that ``filters`` keep, in ``order``: after ``cursor`` (a ``next_cursor`` of the
    same listing), or after skipping ``offset`` jobs; with the number of all such jobs when ``count``.

    InvalidCursor for a cursor that is not one, belongs to another order or other filters, or comes with an
    offset."""
    digest = filters.digest()
    after = None
    if cursor is not None:
        if offset:
            raise InvalidCursor("give a cursor or an offset, not both: a cursor already says where the page starts")
        after = Position.decode(cursor, order, digest)
    conditions = filters.conditions()
    with db.read() as session:
        if offset:
            rows = _offset_page(session, conditions, order, limit + 1, offset)
        else:
            rows = _keyset_page(session, conditions, order, after, limit + 1)
        total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) if count else None
    page = list(rows[:limit])
    more = len(rows) > limit
    next_cursor = Position.of(page[-1], order).encode(order, digest) if more else None
    return JobPage(page, total, next_cursor)


def _keyset_page(
    session: Session, conditions: list[ColumnElement[bool]], order: JobOrder, after: Position | None, size: int
) -> list[Job]:
    key = order.key
    rows: list[Job] = []
    if after is None or after.value is not None:
        # The jobs that have a value, in (value, id) order, after the cursor's.
        bounded = [key.is_not(None)] if order.nullable else []
        if after is not None:
            past = tuple_(key, Job.id)
            # Bound with the columns' own types: created_at goes through UTCDateTime, as stored.
            start = tuple_(literal(after.value, key.type), literal(after.job_id, Job.id.type))
            bounded.append(past < start if order.descending else past > start)
        query = select(Job).where(*conditions, *bounded).order_by(*order.by(key, Job.id)).limit(size)
        rows += session.scalars(query).all()
    if order.nullable and len(rows) < size:
        # Then those without one, by id.
        missing = [key.is_(None)]
        if after is not None and after.value is None:
            missing.append(Job.id < after.job_id if order.descending else Job.id > after.job_id)
        query = select(Job).where(*conditions, *missing).order_by(*order.by(Job.id)).limit(size - len(rows))
        rows += session.scalars(query).all()
    return rows


def _offset_page(
    session: Session, conditions: list[ColumnElement[bool]], order: JobOrder, size: int, offset: int
) -> list[Job]:
    """The keyset order, ``offset`` jobs in. In one statement, missing values last would sort every matching
    row (half a second at 50,000 jobs); so the jobs with a value are counted on the index and skipped there."""
    key = order.key
    if not order.nullable:
        query = select(Job).where(*conditions).order_by(*order.by(key, Job.id)).limit(size).offset(offset)
        return list(session.scalars(query).all())
    valued = session.scalar(select(func.count()).select_from(Job).where(*conditions, key.is_not(None))) or 0
    rows: list[Job] = []
    if offset < valued:
        query = select(Job).where(*conditions, key.is_not(None)).order_by(*order.by(key, Job.id))
        rows += session.scalars(query.limit(size).offset(offset)).all()
    if len(rows) < size:
        query = select(Job).where(*conditions, key.is_(None)).order_by(*order.by(Job.id))
        rows += session.scalars(query.limit(size - len(rows)).offset(max(offset - valued, 0))).all()
    return rows


# -- cursors --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last job's sort value (None: it had none) and id."""

    value: datetime | float | None
    job_id: str

    @classmethod
    def of(cls, job: Job, order: JobOrder) -> Position:
        return cls(getattr(job, order.column), job.id)

    def encode(self, order: JobOrder, digest: str) -> str:
        """URL-safe base64 of ``[version, order, filters' digest, value, id]``."""
        value = self.value.isoformat() if isinstance(self.value, datetime) else self.value
        text = json.dumps([CURSOR_VERSION, str(order), digest, value, self.job_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str, order: JobOrder, digest: str) -> Position:
        try:
            payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (binascii.Error, ValueError) as exc:  # not base64, not UTF-8, not JSON
            raise InvalidCursor(_NOT_A_CURSOR) from exc
        if not (isinstance(payload, list) and len(payload) == 5 and payload[0] == CURSOR_VERSION):
            raise InvalidCursor(_NOT_A_CURSOR)
        _version, sorted_by, made_for, value, job_id = payload
        if sorted_by != str(order):
            raise InvalidCursor(
                f"this cursor continues a listing sorted by {str(sorted_by)[:40]!r}, not {str(order)!r}: "
                "list with the first page's sort and filters, or start again without a cursor"
            )
        if made_for != digest:
            raise InvalidCursor(
                "this cursor continues a listing with other filters: list with the first page's filters, "
                "or start again without a cursor"
            )
        if not (isinstance(job_id, str) and 1 <= len(job_id) <= 64 and valid_key(job_id) and _encodable(job_id)):
            raise InvalidCursor(_NOT_A_CURSOR)
        return cls(_sort_value(value, order), job_id)


_NOT_A_CURSOR = "not a cursor of this listing: pass the `next_cursor` of the previous page unchanged"


def _sort_value(value: Any, order: JobOrder) -> datetime | float | None:
    """The cursor's sort value as the column holds it; InvalidCursor for anything a cursor cannot hold."""
    if order.column == "created_at":
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
            if moment is not None and moment.tzinfo is not None:
                return moment.astimezone(UTC)
        except (ValueError, OverflowError) as exc:  # not a time, or one UTC cannot hold (year 1 at +01:00)
            raise InvalidCursor(_NOT_A_CURSOR) from exc
        raise InvalidCursor(_NOT_A_CURSOR)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)  # an integer of 400 digits is no double
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise InvalidCursor(_NOT_A_CURSOR)


def _encodable(text: str) -> bool:
    """Whether a database driver can send ``text``: a JSON escape may make a lone surrogate, which is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- spec fields ----------------------------------------------------------------------------------------


def spec_kind(name: str) -> type:
    """The Python type a spec field's values are compared as: str (enums), bool, int, float or list (of ints)."""
    annotation = SpecFields.model_fields[name].annotation
    if get_origin(annotation) in (Union, UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not NoneType]
    if get_origin(annotation) is list:
        return list
    assert isinstance(annotation, type), name
    for kind in (Enum, bool, int, float):
        if issubclass(annotation, kind):
            return str if kind is Enum else kind
    raise AssertionError(f"spec field {name}: no comparison for {annotation}")


def spec_condition(name: str, value: Any) -> ColumnElement[bool]:
    """Jobs whose spec has ``value`` for the field ``name`` (compared as that field's type; see the module's
    docstring). ``seed`` is the run's seed: the spec's, or the one drawn at submission."""
    if name not in SpecFields.model_fields:
        raise ValueError(f"no spec field {name!r}")
    if name == "seed":
        return Job.seed == int(value)
    kind = spec_kind(name)
    if kind is list:
        widths = [int(width) for width in value]
        present = Job.spec[name].as_string().is_not(None)  # the array's text: NULL only when the key is absent
        same = [Job.spec[(name, index)].as_integer() == width for index, width in enumerate(widths)]
        return and_(present, *same, Job.spec[(name, len(widths))].as_integer().is_(None))
    extracted: ColumnElement[Any]
    if kind is str:
        extracted, wanted = Job.spec[name].as_string(), _plain(value)
    elif kind is bool:
        extracted, wanted = Job.spec[name].as_boolean(), bool(value)
    elif kind is int:
        extracted, wanted = Job.spec[name].as_integer(), int(value)
    else:
        extracted, wanted = Job.spec[name].as_float(), float(value)
    default = SpecFields.model_fields[name].default
    if default is not None:
        extracted = func.coalesce(extracted, _plain(default), type_=extracted.type)
    return extracted == wanted


def _plain(value: Any) -> Any:
    """A filter value as JSON has it: an enum's value, a list of plain values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
