"""HTTP request and response bodies, separate from the database tables."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializeAsAny,
    Tag,
    field_validator,
    model_validator,
)

from models.presets import PresetName
from models.spec import SpecFields, TrainingSpec
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
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="Jobs matching the filter, over all pages.")
    limit: int
    offset: int


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
