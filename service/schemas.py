"""HTTP request and response bodies, separate from the database tables."""

from __future__ import annotations

import json
from datetime import datetime
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializeAsAny,
    Tag,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from models.presets import PresetName
from models.spec import MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH, SpecFields, TrainingSpec
from service.jobs.status import JobStatus, StudyStatus

if TYPE_CHECKING:  # the ORM stays out of the client's imports (tests/client/test_imports.py)
    from service.store.tables import Job


class JobCreate(SpecFields):
    """A training job: the MLP and its recipe. Every field is optional; defaults are the d2l chapter 4 recipe.

    With ``preset``, the preset's values replace the defaults and the fields given here override the preset.
    """

    preset: PresetName | None = Field(default=None, description="Start from a named spec: d2l-mlp or best-mlp.")

    def explicit_fields(self) -> dict[str, Any]:
        """The spec fields the caller set, without the preset."""
        return self.model_dump(exclude_unset=True, exclude={"preset"})


class JobProgress(BaseModel):
    epoch: int = Field(description="Epochs finished so far.")
    epochs: int = Field(description="Epochs the job will run.")


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    status: JobStatus
    spec: TrainingSpec
    seed: int = Field(description="The seed the run uses (the spec's, or one drawn at submission).")
    progress: JobProgress
    attempt: int = Field(description="How many times a worker has claimed this job.")
    max_attempts: int
    error: str | None = Field(default=None, description="Why the job failed (or why its last attempt ended).")
    model_id: str | None = Field(default=None, description="The checkpoint this job produced, once succeeded.")
    device: str | None = Field(default=None, description="Where the job ran.")
    preset: str | None = None
    sweep_id: str | None = None
    study_id: str | None = None
    provenance: dict[str, Any] | None = Field(
        default=None, description="torch version, device, data files' sha256 and code version of the last attempt."
    )
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tags: dict[str, str] = Field(default_factory=dict, description="Labels set with PATCH /v1/jobs/{id}.")
    note: str | None = Field(default=None, description="A free text set with PATCH /v1/jobs/{id}.")
    test_acc: float | None = Field(
        default=None, description="Test accuracy: the kept epoch's once succeeded, else the latest epoch's."
    )
    val_acc: float | None = Field(
        default=None, description="Validation accuracy, as test_acc; null without a validation split."
    )
    train_seconds: float | None = Field(default=None, description="Seconds of training over the recorded epochs.")

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        spec = TrainingSpec.model_validate(job.spec)
        return cls(
            id=job.id,
            status=job.status,
            spec=spec,
            seed=job.seed,
            progress=JobProgress(epoch=job.epochs_done, epochs=spec.epochs),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            error=job.error,
            model_id=job.model_id,
            device=job.device,
            preset=job.preset,
            sweep_id=job.sweep_id,
            study_id=job.study_id,
            provenance=job.provenance,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            tags=job.tags or {},
            note=job.note,
            test_acc=job.test_acc,
            val_acc=job.val_acc,
            train_seconds=job.train_seconds,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int | None = Field(
        description="Jobs matching the filters, over all pages; null when the request said `count=false`."
    )
    limit: int
    offset: int
    next_cursor: str | None = Field(
        default=None,
        description="Pass as `cursor` (with the same sort and filters) for the next page; null on the last page.",
    )


# -- run tracking: labels, listings, comparisons ---------------------------------------------------------

MAX_TAGS = 32
MAX_TAG_CHANGES = 2 * MAX_TAGS
TAG_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
TAG_VALUE_CHARS = 256
NOTE_CHARS = 10_000
# No control characters in a tag value (they would only garble tables and URLs); none in a tag filter either.
_TAG_VALUE_CHARACTERS = r"[^\x00-\x1f\x7f]"
TAG_FILTER_PATTERN = rf"^[A-Za-z0-9_.-]{{1,64}}(:{_TAG_VALUE_CHARACTERS}{{0,{TAG_VALUE_CHARS}}})?$"
# A JSON array of 0 to 8 layer widths, each 1-8192: exactly the spec's hidden_layers, written as in the spec.
_WIDTH = "(?:[1-9][0-9]{0,2}|[1-7][0-9]{3}|80[0-9]{2}|81[0-8][0-9]|819[0-2])"
HIDDEN_LAYERS_PATTERN = rf"^\[ *(?:{_WIDTH}(?: *, *{_WIDTH}){{0,{MAX_HIDDEN_LAYERS - 1}}})? *\]$"
assert MAX_LAYER_WIDTH == 8192, "HIDDEN_LAYERS_PATTERN spells the widest layer out"


TagKey = Annotated[str, Field(min_length=1, max_length=64, pattern=TAG_KEY_PATTERN)]
# The patterns keep out what a database cannot store as text: NUL (PostgreSQL refuses it); pydantic itself
# refuses lone surrogates (a JSON "\ud800"), which are not UTF-8.
TagValue = Annotated[str, Field(max_length=TAG_VALUE_CHARS, pattern=f"^{_TAG_VALUE_CHARACTERS}*$")]
NoteText = Annotated[str, Field(max_length=NOTE_CHARS, pattern=r"^[^\x00]*$")]


TagChanges = Annotated[
    dict[TagKey, TagValue | None],
    Field(max_length=MAX_TAG_CHANGES),
    # Every key follows the pattern (pydantic would document it as patternProperties, which lets other keys
    # through with any value).
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_TAG_CHANGES,
            "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": TAG_KEY_PATTERN},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": TAG_VALUE_CHARS, "pattern": f"^{_TAG_VALUE_CHARACTERS}*$"},
                    {"type": "null"},
                ]
            },
        }
    ),
]


class JobUpdate(BaseModel):
    """A job's labels, changed as a JSON Merge Patch (RFC 7396): fields left out stay as they are.

    ``tags`` merges into the job's tags: a tag given a value is set, a tag given null is removed, tags not named
    stay; ``"tags": null`` removes them all. ``note`` replaces the note; null clears it.
    """

    model_config = ConfigDict(extra="forbid")

    tags: TagChanges | None = Field(
        default=None,
        description=f"Tags to set (a string of at most {TAG_VALUE_CHARS} characters, no control characters) or "
        f"remove (null). Keys: 1-64 letters, digits, '_', '.' or '-'. A job has at most {MAX_TAGS} tags.",
        examples=[{"team": "vision", "baseline": None}],
    )
    note: NoteText | None = Field(
        default=None, description=f"Free text of at most {NOTE_CHARS:,} characters; null clears it."
    )

    def changes(self) -> dict[str, Any]:
        """The fields the caller sent (null included), by name: what the update changes."""
        return {name: getattr(self, name) for name in self.model_fields_set}


JobSort = Literal[
    "created_at", "-created_at", "test_acc", "-test_acc", "val_acc", "-val_acc", "train_seconds", "-train_seconds"
]
Accuracy = Annotated[float, Field(ge=0.0, le=1.0)]


class JobListQuery(BaseModel):
    """GET /v1/jobs's query parameters; the spec fields' filters are added below, one per field. A parameter
    that is none of these is refused: a misspelt filter must not list every job."""

    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = Field(default=None, description="Only jobs in this state.")
    tag: list[Annotated[str, Field(pattern=TAG_FILTER_PATTERN)]] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="`key:value`: only jobs with this tag value; `key`: only jobs with this tag. Repeat it: "
        "every one must hold.",
        examples=[["team:vision"]],
    )
    sweep_id: str | None = Field(default=None, max_length=64, description="Only this sweep's jobs.")
    study_id: str | None = Field(default=None, max_length=64, description="Only this study's trials.")
    min_test_acc: Accuracy | None = Field(default=None, description="Only jobs with at least this test accuracy.")
    max_test_acc: Accuracy | None = Field(default=None, description="Only jobs with at most this test accuracy.")
    min_val_acc: Accuracy | None = Field(default=None, description="Only jobs with at least this validation accuracy.")
    max_val_acc: Accuracy | None = Field(default=None, description="Only jobs with at most this validation accuracy.")
    sort: JobSort = Field(
        default="-created_at",
        description="The order, `-` first for descending; ties by id in the same direction. Jobs without the "
        "value (no epoch yet) come last in both directions.",
    )
    cursor: str | None = Field(
        default=None,
        max_length=512,
        description="The previous page's `next_cursor`, with the same sort and filters: the page after it.",
    )
    limit: int = Field(default=50, ge=1, le=500, description="Page size.")
    offset: int = Field(
        default=0,
        ge=0,
        le=2**63 - 1,  # service.api.deps.MAX_OFFSET: past the databases' 64-bit integers, a 422
        description="Jobs to skip (without a cursor); deep offsets cost more than cursors.",
    )
    count: bool = Field(
        default=True,
        description="Count every job that matches: a scan of them all, which at 500,000 jobs costs more than the "
        "page (milliseconds; with a spec filter, most of a second on SQLite). false leaves `count` null.",
    )

    def spec_filters(self) -> dict[str, Any]:
        """The spec fields' filters given, by field name; the layer widths as a list."""
        given = {name: getattr(self, name) for name in SpecFields.model_fields if getattr(self, name) is not None}
        if "hidden_layers" in given:
            given["hidden_layers"] = json.loads(given["hidden_layers"])  # the pattern admits JSON arrays only
        return given


def _spec_filter(name: str, spec_field: FieldInfo) -> tuple[Any, Any]:
    """A query parameter for one spec field: its type and bounds (a value no spec could have is a 422), as text
    for the layer widths."""
    description = f"Only jobs whose spec has this {name}."
    if name == "hidden_layers":
        text = Field(
            default=None,
            pattern=HIDDEN_LAYERS_PATTERN,
            description=f"{description} A JSON array, e.g. `[256]`, `[1024,512]`, or `[]`.",
        )
        return str | None, text
    if name == "seed":
        description = "Only jobs whose run has this seed (the spec's, or the one drawn at submission)."
    annotation: Any = spec_field.annotation
    if get_origin(annotation) in (Union, UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not NoneType]
    if spec_field.metadata:  # the field's bounds
        annotation = Annotated[(annotation, *spec_field.metadata)]
    return annotation | None, Field(default=None, description=description)


if not TYPE_CHECKING:  # to mypy, JobListQuery is the class above; spec_filters() reads the added fields
    JobListQuery = create_model(
        "JobListQuery",
        __base__=JobListQuery,
        __doc__=JobListQuery.__doc__,
        **{name: _spec_filter(name, spec_field) for name, spec_field in SpecFields.model_fields.items()},
    )


class EpochMetricsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float | None = None
    test_acc: float
    lr: float | None = None
    seconds: float


class JobMetricsPublic(BaseModel):
    job_id: str
    status: JobStatus
    epochs: list[EpochMetricsPublic]


class ComparedJobPublic(BaseModel):
    id: str
    status: JobStatus
    params: dict[str, Any] = Field(description="This job's values of the fields that differ (`fields`).")
    tags: dict[str, str]
    model_id: str | None
    final: EpochMetricsPublic | None = Field(description="The latest recorded epoch.")
    best_test: EpochMetricsPublic | None = Field(
        description="The epoch with the highest test accuracy (the earliest of equals)."
    )
    best_val: EpochMetricsPublic | None = Field(
        description="The epoch with the highest validation accuracy; null without a validation split."
    )


class JobComparisonPublic(BaseModel):
    """Jobs side by side: what differs in their specs, and how each one did."""

    fields: list[str] = Field(
        description="The spec fields whose values differ among the jobs, in the spec's order (`seed`: the run's)."
    )
    jobs: list[ComparedJobPublic] = Field(description="In the order asked, each job once.")


class ClassProbabilityPublic(BaseModel):
    class_id: int
    class_name: str
    probability: float


class PredictionPublic(BaseModel):
    """One image's prediction: its best class, and the ``top_k`` best with their probabilities."""

    index: int = Field(ge=0, description="The image's position in the request, from 0 (upload order).")
    filename: str | None = Field(
        default=None, description="The uploaded file's name as the client sent it; null for pixel arrays."
    )
    class_id: int
    class_name: str
    probability: float
    top_k: list[ClassProbabilityPublic]


# A filename is echoed in an error's detail up to this many characters.
SHOWN_FILENAME = 80


def image_location(index: int, filename: str | None) -> str:
    """How an image's error detail names it: ``file 3 ('b.webp')``, index from 0 in the request."""
    if not filename:
        return f"file {index} (no filename)"
    shown = filename if len(filename) <= SHOWN_FILENAME else filename[: SHOWN_FILENAME - 3] + "..."
    return f"file {index} ({shown!r})"


class ImageErrorPublic(BaseModel):
    status: int = Field(description="The HTTP status this image alone would have been answered with.")
    type: str = Field(description="What kind of problem: `corrupt_image`, `unsupported_image`, `image_too_large`...")
    detail: str = Field(description="The image's index and filename, what is wrong, and what to send instead.")


class PredictionFailedPublic(BaseModel):
    """An image that could not be classified, and why; it costs the request's other images nothing."""

    index: int = Field(ge=0, description="The image's position in the request, from 0 (upload order).")
    filename: str | None = Field(default=None, description="The uploaded file's name as the client sent it.")
    error: ImageErrorPublic


class PredictPublic(BaseModel):
    model_id: str
    # Each entry is written by its own class's serializer: pydantic's union serializer took 2.5 us more per
    # entry, on the path of every prediction. Validation and the JSON schema still see the union.
    predictions: list[SerializeAsAny[PredictionPublic | PredictionFailedPublic]] = Field(
        description="One entry per image, in upload order: a prediction, or an `error` for an image that "
        "could not be used."
    )
    failed: int = Field(default=0, ge=0, description="How many entries carry an `error` instead of a prediction.")


class PredictRefusedPublic(PredictPublic):
    """No image of the request could be used: the entries as in a 200 answer, each with its `error`."""

    detail: str = Field(description="The first image's error (the answer's status is its), and how many others.")
    code: str = Field(description="The first image's error `type`.")


class HealthPublic(BaseModel):
    status: str


class ReadyPublic(BaseModel):
    status: str
    database: str
    schema_revision: str | None
    expected_revision: str | None


CODE_DESCRIPTION = (
    "What went wrong, stable across releases, for programs: `job_not_found`, `validation_error`, "
    "`queue_limit_reached`... (service/errors.py lists them)."
)


class ErrorPublic(BaseModel):
    detail: str = Field(description="What went wrong and what to change.")
    code: str = Field(description=CODE_DESCRIPTION)


class ValidationErrorPublic(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query` or `path`, then the field.")
    msg: str
    type: str


class ValidationErrorsPublic(BaseModel):
    """A request that does not fit the schema: one entry per problem (FastAPI's 422 form)."""

    detail: list[ValidationErrorPublic]
    code: str = Field(description=CODE_DESCRIPTION)


class SweepCreate(BaseModel):
    """A grid search: one job per combination of the grid's values, each on top of ``base``."""

    model_config = ConfigDict(extra="forbid")

    base: JobCreate = Field(default_factory=JobCreate, description="The spec every grid point starts from.")
    grid: dict[str, list[Any]] = Field(
        description="Spec field -> values to try; the sweep runs every combination.",
        examples=[{"hidden_layers": [[256], [1024]], "lr": [0.1, 0.5]}],
    )


class SweepJobPublic(BaseModel):
    id: str
    params: dict[str, Any] = Field(description="This grid point's values.")
    spec: TrainingSpec
    status: JobStatus
    progress: JobProgress
    val_acc: float | None = Field(description="Validation accuracy of the selected (or latest) epoch.")
    test_acc: float | None = Field(description="Test accuracy of the selected (or latest) epoch.")
    model_id: str | None


class SweepPublic(BaseModel):
    id: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    created_at: datetime
    counts: dict[str, int] = Field(description="Jobs per status.")
    jobs: list[SweepJobPublic] = Field(description="Best first: by validation accuracy when present, else test.")


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int


Condition = Field(
    default=None,
    description="Suggest this parameter only when these fields (base fields or parameters listed earlier) have "
    'these values, e.g. {"optimizer": "sgd"}; otherwise the spec\'s value stands.',
)


class ParamRange(BaseModel):
    """A numeric spec field searched over [low, high]; whole numbers for integer fields."""

    model_config = ConfigDict(extra="forbid")

    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = Field(default=False, description="Sample on a log scale (low > 0), as learning rates usually are.")
    step: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="Only multiples of step above low.")
    when: dict[str, Any] | None = Condition

    @model_validator(mode="after")
    def _ordered(self) -> ParamRange:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        return self

    def as_space(self) -> dict[str, Any]:
        # Integers stay integers in JSON (an int field's bounds), so the space reads back as written.
        exact = {
            k: int(v) if isinstance(v, float) and v.is_integer() else v
            for k, v in self.model_dump(exclude_none=True).items()
        }
        return {k: v for k, v in exact.items() if k != "log" or v}


class ParamChoices(BaseModel):
    """A spec field searched over a list of values (any field: layer lists, activations, numbers)."""

    model_config = ConfigDict(extra="forbid")

    choices: list[Any] = Field(min_length=1, max_length=64, examples=[[[64], [256], [1024]]])
    when: dict[str, Any] | None = Condition

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        texts = [repr(choice) for choice in choices]
        if len(set(texts)) != len(texts):
            raise ValueError("choices must be distinct")
        return choices

    def as_space(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SamplerConfig(BaseModel):
    """Which Optuna sampler suggests the trials: ``"tpe"``, ``"random"`` or ``"grid"`` (or an object with
    ``type`` and options)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tpe", "random", "grid"] = "tpe"
    n_startup_trials: int = Field(default=10, ge=0, le=1000, description="TPE: random trials before it models.")
    multivariate: bool = Field(default=False, description="TPE: model the parameters jointly.")


class MedianPruner(BaseModel):
    """Stops a trial whose best validation accuracy so far is below the median of finished trials' at the same
    epoch (median stopping rule, Google Vizier)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["median"]
    n_startup_trials: int = Field(default=5, ge=0, le=1000, description="Finished trials needed before it prunes.")
    n_warmup_steps: int = Field(default=0, ge=0, le=1000, description="Epochs a trial always runs.")


class SuccessiveHalvingPruner(BaseModel):
    """Asynchronous successive halving (ASHA): at rungs min_resource x reduction_factor^k epochs, a trial goes
    on only in the top 1/reduction_factor of the trials that reached that rung."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["successive_halving"]
    min_resource: int | None = Field(
        default=None, ge=1, le=1000, description="First rung, in epochs (auto if omitted)."
    )
    reduction_factor: int = Field(default=4, ge=2, le=100)
    min_early_stopping_rate: int = Field(default=0, ge=0, le=100)


class HyperbandPruner(BaseModel):
    """Hyperband: several successive-halving brackets with different first rungs."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hyperband"]
    min_resource: int = Field(default=1, ge=1, le=1000, description="Epochs of the smallest rung.")
    max_resource: int | None = Field(
        default=None, ge=1, le=1000, description="Epochs of a full trial (auto if omitted)."
    )
    reduction_factor: int = Field(default=3, ge=2, le=100)


class NoPruner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["none"]


PrunerConfig = Annotated[
    MedianPruner | SuccessiveHalvingPruner | HyperbandPruner | NoPruner, Field(discriminator="type")
]


def _param_kind(value: Any) -> str:
    return "choices" if isinstance(value, ParamChoices) or (isinstance(value, dict) and "choices" in value) else "range"


ParamSpace = Annotated[
    Annotated[ParamRange, Tag("range")] | Annotated[ParamChoices, Tag("choices")], Discriminator(_param_kind)
]


def _tagged(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


class StudyCreate(BaseModel):
    """An adaptive search: Optuna's sampler suggests specs from ``space`` on top of ``base``; the pruner stops
    trials whose validation accuracy falls behind. Each trial is one job."""

    model_config = ConfigDict(extra="forbid")

    base: JobCreate = Field(
        default_factory=JobCreate,
        description="The spec every trial starts from. val_fraction defaults to 0.1: trials are judged on it.",
    )
    space: dict[str, ParamSpace] = Field(
        description="Spec field -> range or choices, suggested in this order.",
        examples=[
            {
                "lr": {"low": 0.01, "high": 0.5, "log": True},
                "hidden_layers": {"choices": [[64], [256], [1024], [256, 256]]},
                "momentum": {"low": 0.0, "high": 0.95, "when": {"optimizer": "sgd"}},
            }
        ],
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description='"tpe", "random" or "grid".')
    pruner: PrunerConfig = Field(
        default_factory=lambda: MedianPruner(type="median"),
        description='"median", "successive_halving", "hyperband" or "none" (or an object with type and options).',
    )
    trials: int = Field(default=20, ge=1, le=1000, description="How many trials the study runs in all.")
    max_concurrent: int = Field(default=4, ge=1, le=256, description="Trials queued or running at once.")
    seed: int | None = Field(
        default=None, ge=0, le=2**31 - 1, description="Seeds the sampler and the trials; drawn when omitted."
    )

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _tagged(value)


class StudyTrialPublic(BaseModel):
    number: int = Field(description="The trial's place in the order of suggestion, from 0.")
    job_id: str | None = Field(description="The job that runs it; none for a suggestion that is not a valid spec.")
    params: dict[str, Any] = Field(description="The values the sampler suggested.")
    status: JobStatus
    progress: JobProgress
    val_acc: float | None = Field(
        description="The objective: the kept epoch's validation accuracy (latest while running)."
    )
    test_acc: float | None = Field(description="Test accuracy of the kept (or latest) epoch; never used to choose.")
    curve: list[float | None] = Field(description="Validation accuracy per epoch, from epoch 1: what the pruner saw.")
    pruned_at_epoch: int | None = None
    error: str | None = None


class StudyBestPublic(BaseModel):
    number: int
    job_id: str
    params: dict[str, Any]
    val_acc: float
    test_acc: float | None
    model_id: str | None


class StudyPublic(BaseModel):
    id: str
    status: StudyStatus
    base: dict[str, Any]
    space: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    n_trials: int = Field(description="How many trials the study runs in all.")
    max_concurrent: int
    seed: int
    counts: dict[str, int] = Field(description="Trials per status.")
    trials: list[StudyTrialPublic] = Field(description="In the order the sampler suggested them.")
    best: StudyBestPublic | None = Field(description="The succeeded trial with the best validation accuracy.")
    created_at: datetime
    finished_at: datetime | None


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    count: int


class ModelPublic(BaseModel):
    id: str
    job_id: str
    summary: str = Field(description="The architecture and recipe in one line, e.g. '784-256-10 relu, sgd lr 0.1'.")
    spec: TrainingSpec
    parameters: int
    test_acc: float | None = Field(description="Test accuracy of the kept epoch.")
    val_acc: float | None = Field(description="Validation accuracy of the kept epoch, when the job held some out.")
    epoch: int | None = Field(description="The epoch whose weights the checkpoint holds.")
    size_bytes: int
    sha256: str
    aliases: list[str]
    created_at: datetime


class ModelsPublic(BaseModel):
    models: list[ModelPublic]
    count: int


class AliasSet(BaseModel):
    """Point an alias at a model."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=64, description="A model id, or another alias to copy.")


class AliasPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    model_id: str
    created_at: datetime
    updated_at: datetime


class AliasesPublic(BaseModel):
    aliases: list[AliasPublic]


# -- model evaluation (models/evaluation.py): GET /v1/models/{model_ref}/evaluation -----------------------------


class ClassScoresPublic(BaseModel):
    """One class's scores; a ratio whose denominator is 0 (a class never predicted, or never present) is 0."""

    class_id: int
    class_name: str
    precision: float = Field(description="Of the samples predicted as this class, the share that are of it.")
    recall: float = Field(description="Of the samples of this class, the share predicted as it.")
    f1: float = Field(description="2 tp / (2 tp + fp + fn): the harmonic mean of precision and recall.")
    support: int = Field(description="Samples of this class in the split.")


class ConfusedPairPublic(BaseModel):
    """Samples of one class predicted as another."""

    true_class_id: int
    true_class_name: str
    predicted_class_id: int
    predicted_class_name: str
    count: int
    share: float = Field(description="count over the true class's samples.")


class CalibrationBinPublic(BaseModel):
    """The predictions whose confidence (the predicted class's probability) lies in (lower, upper]."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None = Field(description="Their mean confidence; null for an empty bin.")
    accuracy: float | None = Field(description="The share of them predicted right; null for an empty bin.")


class CalibrationPublic(BaseModel):
    bins: list[CalibrationBinPublic] = Field(description="15 equal-width confidence bins, from 0 to 1.")


class MistakePublic(BaseModel):
    """A misclassified sample and how sure the model was of its wrong answer."""

    index: int = Field(description="Its row in its file: the test file, or for validation the training file.")
    true_class_id: int
    true_class_name: str
    predicted_class_id: int
    predicted_class_name: str
    probability: float = Field(description="The probability the model gave the class it predicted.")


class SplitEvaluationPublic(BaseModel):
    """A model's evaluation on one split, with the weights of its kept epoch."""

    split: Literal["test", "validation"]
    samples: int
    accuracy: float = Field(description="Top-1 accuracy; on the test split, the model's test_acc.")
    confusion_matrix: list[list[int]] = Field(
        description="10x10 counts: row i, column j counts samples of class i predicted as class j."
    )
    per_class: list[ClassScoresPublic]
    confused_pairs: list[ConfusedPairPublic] = Field(description="The 10 largest off-diagonal cells, largest first.")
    ece: float = Field(description="Expected calibration error over the 15 bins (Guo et al., 2017).")
    calibration: CalibrationPublic = Field(description="The reliability diagram's data.")
    mistakes: list[MistakePublic] = Field(description="Up to 36 mistakes, the most confident first.")


class ModelEvaluationPublic(SplitEvaluationPublic):
    """A model's evaluation on the test split, and on the validation rows its job held out (null without)."""

    model_id: str
    validation: SplitEvaluationPublic | None = Field(
        description="The same on the validation split, when the job held one out."
    )


# -- the model card (service/serving/card.py): GET /v1/models/{model_ref}/card ------------------------------


class KeptEpochPublic(BaseModel):
    """The epoch whose weights the checkpoint holds, and why that one."""

    epoch: int | None = Field(description="The kept epoch, from 1; null for a model registered before it was recorded.")
    reason: Literal["validation", "last"] = Field(
        description="`validation`: the job held out `val_fraction` of the training rows and kept the epoch with the "
        "best validation accuracy (the earliest of equals); `last`: no validation split, so the last epoch trained."
    )
    epochs_trained: int = Field(description="Epochs the job recorded (fewer than planned when it stopped early).")
    epochs_planned: int = Field(description="The spec's `epochs`.")
    test_acc: float | None = Field(description="Test accuracy of the kept epoch.")
    val_acc: float | None = Field(description="Validation accuracy of the kept epoch; null without a validation split.")


class LineagePublic(BaseModel):
    """Where the model comes from: its job, the sweep or study that asked for it, and how the job ran."""

    job_id: str
    preset: str | None = Field(description="The named spec the job started from, if any.")
    sweep_id: str | None = Field(description="The sweep whose grid point it is, if any.")
    study_id: str | None = Field(description="The study whose trial it is, if any.")
    trial_number: int | None = Field(description="Its trial's number in the study (0, 1, ... in the order suggested).")
    attempts: int = Field(description="How many times a worker claimed the job: more than 1 after a retry or a crash.")
    max_attempts: int
    resumed_from_epoch: int | None = Field(
        description="The last attempt went on after this epoch, from its saved state (0: it started from scratch); "
        "null when not recorded."
    )
    tags: dict[str, str] | None = Field(
        description="The job's labels (PATCH /v1/jobs/{id}); null for a caller without the `train` scope."
    )
    note: str | None = Field(description="The job's note; null for a caller without the `train` scope.")
    submitted_at: datetime
    started_at: datetime | None = Field(description="When its last attempt started.")
    finished_at: datetime | None


class CardProvenancePublic(BaseModel):
    """What the run used, recorded by the worker as its last attempt began (the job's `provenance`)."""

    seed: int = Field(description="The run's seed: initial weights, validation split, shuffling and dropout.")
    data_sha256: dict[str, str] = Field(description="The sha256 of each Fashion-MNIST file it trained and tested on.")
    code_version: str | None = Field(description="The service's git commit (`+dirty` with local changes), or version.")
    torch_version: str | None
    device: str | None = Field(description="Where it trained, e.g. `cpu` or the GPU's name.")
    cuda_graphs: bool | None = Field(description="Whether its training steps ran as CUDA graphs.")
    pack_size: int | None = Field(description="Jobs trained together in its pack (1: alone); null when not recorded.")
    train_seconds: float | None = Field(description="Seconds of training, over its recorded epochs.")
    train_samples: int | None = Field(description="Training rows per epoch (the training split less validation).")


class InputContractPublic(BaseModel):
    """What the network reads, and what an uploaded image becomes before it does (models/preprocessing.py)."""

    height: int = Field(description="Pixels.")
    width: int = Field(description="Pixels.")
    colour: Literal["grey"]
    polarity: str = Field(description="What the network was trained to see: a light garment on a dark background.")
    upload_steps: list[str] = Field(description="What /v1/predict does to an upload, in order.")
    formats: list[str] = Field(description="The image formats /v1/predict reads.")
    max_upload_bytes: int = Field(description="This server's limit on one uploaded file (413 past it).")
    max_image_pixels: int = Field(description="This server's limit on an image's pixels (413 past it).")
    pixels: str = Field(description="How /v1/predict/pixels takes its arrays.")


class UploadAccuracyPublic(BaseModel):
    """How one kind of file people upload did in the benchmark."""

    upload: str = Field(description="How each test image was made into a file.")
    accuracy: float
    change: float | None = Field(description="Accuracy minus that of the 28x28 PNG; null for the tensors themselves.")
    agreement: float = Field(description="The share of images predicted as their test tensor is.")


class KnownLimitsPublic(BaseModel):
    """Where predictions on real uploads are known to fall short, as measured by bench.upload_accuracy."""

    source: str = Field(description="The benchmark and the README section the numbers come from.")
    setup: str = Field(description="What was measured: the recipe trained and the images used.")
    uploads: list[UploadAccuracyPublic]
    notes: list[str] = Field(description="The limits in words.")


class ModelCardPublic(BaseModel):
    """One model, all that is known about it: what it is, how it was made, how well it does, what it takes as
    input and where it falls short."""

    model_id: str
    summary: str = Field(description="The architecture and recipe in one line, e.g. '784-256-10 relu, sgd lr 0.1'.")
    aliases: list[str]
    created_at: datetime
    sha256: str = Field(description="The checkpoint file's sha256.")
    size_bytes: int = Field(description="The checkpoint file's size.")
    spec: TrainingSpec
    parameters: int = Field(description="Weights and biases in the network.")
    kept_epoch: KeptEpochPublic
    evaluation: ModelEvaluationPublic = Field(description="As GET /v1/models/{model_ref}/evaluation.")
    lineage: LineagePublic
    provenance: CardProvenancePublic
    input_contract: InputContractPublic
    known_limits: KnownLimitsPublic
