"""Studies: adaptive hyperparameter search with Optuna's samplers and pruners, each trial one job.

Where the search's state lives: in the service's database, nowhere else. The ``studies`` row holds the space,
sampler, pruner and seed; each ``study_trials`` row a trial's number, parameters and Optuna's system
attributes (the grid sampler's grid point, successive halving's rungs); the trial's job holds its status and
per-epoch validation accuracy, the objective. For every decision (ask for the next trials, prune a trial or
not) this module rebuilds the Optuna study in memory (``InMemoryStorage``) from those rows inside the write
transaction that records the decision, with the study's row locked. So any process (the API, any worker)
can decide, they all see the same history, and a crash loses nothing: a decision and its effect (the trial's
row and its queued job, or the pruned status) commit together or not at all. A study whose refill was lost
(its deciding worker killed) is topped up by the next worker poll (``advance_running``).

Determinism: trial ``k``'s sampler is seeded from ``(seed, k)`` and its job's training seed too (unless the
base fixes one). Random and grid studies suggest the same parameters in the same order for the same seed,
whatever the concurrency; TPE the same too when ``max_concurrent`` is 1 (its suggestion also depends on which
results are in when it is asked, as in Optuna itself).

The objective is the kept model's validation accuracy (``models.val_acc``, maximised); the pruners read the
per-epoch ``val_acc`` the worker records, the epoch as the step. Sources: Optuna's ask-and-tell interface
(https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/009_ask_and_tell.html); median stopping (Golovin
et al., "Google Vizier", 2017), successive halving (Jamieson & Talwalkar, 2016; asynchronous: Li et al.,
"ASHA", 2020) and Hyperband (Li et al., 2018), as Optuna implements them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.presets import PRESETS
from models.spec import SpecFields
from service.errors import InvalidSpec, StudyNotFound
from service.jobs.specs import validated_spec
from service.jobs.status import JobStatus, StudyStatus
from service.store.db import Database, db_now, valid_key
from service.store.tables import EpochMetric, Job, Model, Study, StudyTrial, utcnow

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
# The trial's objective when validation is held out; the search never looks at the test set.
OBJECTIVE = "val_acc"
DEFAULT_VAL_FRACTION = 0.1

LIVE = (JobStatus.queued, JobStatus.running)


# -- the space ------------------------------------------------------------------------------------------------


def _field_kind(name: str) -> str:
    """'int', 'float' or 'choice': how a field of the spec can be searched."""
    annotation = SpecFields.model_fields[name].annotation
    if annotation in (int, int | None):
        return "int"
    if annotation in (float, float | None):
        return "float"
    return "choice"


def _encode(value: Any) -> str:
    # Optuna's categorical choices must be plain scalars; a layer list like [256] is not, so every choice goes
    # in as its JSON text and comes back out decoded.
    return json.dumps(value, sort_keys=True)


def _condition_holds(when: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    return not when or all(values.get(field) == wanted for field, wanted in when.items())


def _fields(preset: str | None, explicit: dict[str, Any]) -> SpecFields:
    """Defaults, the preset's values and ``explicit``, each field checked on its own: a rule that ties fields
    together (nesterov needs momentum > 0) may hold only once the searched fields are filled in, so it is
    checked per trial (``ask_trials``), not here."""
    return SpecFields.model_validate({**(PRESETS[preset] if preset else {}), **explicit})


def _base_values(preset: str | None, base: dict[str, Any]) -> dict[str, Any]:
    return _fields(preset, base).model_dump(mode="json")


def validate_study(
    preset: str | None, base: dict[str, Any], space: dict[str, dict[str, Any]], sampler: dict[str, Any], n_trials: int
) -> None:
    """Checks a space against the spec: every name a spec field not fixed in ``base``; ranges only for numeric
    fields, with their bounds valid specs; conditions only on base fields or earlier parameters; the grid
    sampler only over choices, with at most as many trials as grid points. Raises InvalidSpec, listing all."""
    errors: list[dict[str, Any]] = []

    def error(loc: list[Any], msg: str) -> None:
        errors.append({"loc": ["body", "space", *loc], "msg": msg, "type": "space"})

    if not space:
        errors.append({"loc": ["body", "space"], "msg": "the space needs at least one parameter", "type": "space"})
    try:
        base_values = _base_values(preset, base)
    except ValidationError:
        base_values = {}  # the base's own errors are reported by validated_spec
    fields = SpecFields.model_fields
    seen: list[str] = []
    for name, param in space.items():
        if name not in fields:
            error([name], f"{name!r} is not a spec field")
            continue
        if name in base:
            error([name], f"{name!r} is fixed in base; search it or fix it, not both")
        kind = _field_kind(name)
        if "choices" in param:
            candidates = list(param["choices"])
        elif kind == "choice":
            error([name], f'{name!r} takes choices (for example {{"choices": [...]}}), not a range')
            continue
        else:
            candidates = [param["low"], param["high"]]
            if kind == "int" and not all(
                isinstance(v, int) for v in (param["low"], param["high"], param.get("step") or 1)
            ):
                error([name], f"{name!r} is a whole number: give low, high (and step) as integers")
                continue
        for index, value in enumerate(candidates):
            try:
                _fields(preset, {**base, name: value})
            except ValidationError as exc:
                for item in exc.errors():
                    where = ["choices", index] if "choices" in param else [("low", "high")[index]]
                    error([name, *where], item["msg"])
        for field, wanted in (param.get("when") or {}).items():
            if field == name or (field not in seen and field not in fields):
                error([name, "when", field], f"a condition may name base fields or parameters listed before {name!r}")
            elif field not in seen and field in base_values and base_values[field] != wanted and field not in space:
                error(
                    [name, "when", field],
                    f"base fixes {field} = {base_values[field]!r}: this parameter would never be used",
                )
        seen.append(name)
    if sampler["type"] == "grid":
        size = 1
        for name, param in space.items():
            if "choices" not in param:
                error([name], "the grid sampler searches a grid: give choices for every parameter")
            elif param.get("when"):
                error(
                    [name, "when"], "the grid sampler searches a full grid: conditions need the tpe or random sampler"
                )
            else:
                size *= len(param["choices"])
        if not errors and n_trials > size:
            errors.append(
                {
                    "loc": ["body", "trials"],
                    "msg": f"the grid has {size} points; ask for at most {size} trials",
                    "type": "space",
                }
            )
    if errors:
        raise InvalidSpec(errors)


def validate_base(preset: str | None, base: dict[str, Any]) -> None:
    """The base's fields, each checked on its own (``_fields``); raises InvalidSpec at ``body.base``."""
    try:
        _fields(preset, base)
    except ValidationError as exc:
        raise InvalidSpec(
            [{"loc": ["body", "base", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from exc


def study_base(base: dict[str, Any]) -> dict[str, Any]:
    """The base a study's trials start from: validation held out (``DEFAULT_VAL_FRACTION`` unless given), since
    the objective and the pruners read validation accuracy. An explicit ``val_fraction`` of 0 is refused."""
    if base.get("val_fraction") == 0:
        raise InvalidSpec(
            [
                {
                    "loc": ["body", "base", "val_fraction"],
                    "msg": "a study selects on validation accuracy: set val_fraction > 0 (for example 0.1)",
                    "type": "space",
                }
            ]
        )
    return {"val_fraction": DEFAULT_VAL_FRACTION, **base}


# -- Optuna, rebuilt from the rows ----------------------------------------------------------------------------


def _derived_seed(seed: int, number: int, purpose: str, modulo: int) -> int:
    digest = hashlib.sha256(f"{seed}:{number}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % modulo


def load_optuna() -> Any:
    """Optuna, imported on first use (half a second): callers do it before they open a write transaction, so
    that the import never holds the database's write lock."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    optuna = load_optuna()
    found: dict[str, Any] = {}
    for name, param in space.items():
        if "choices" in param:
            found[name] = optuna.distributions.CategoricalDistribution([_encode(c) for c in param["choices"]])
        elif _field_kind(name) == "int":
            found[name] = optuna.distributions.IntDistribution(
                param["low"], param["high"], log=param.get("log", False), step=param.get("step") or 1
            )
        else:
            found[name] = optuna.distributions.FloatDistribution(
                param["low"], param["high"], log=param.get("log", False), step=param.get("step")
            )
    return found


def _sampler(study: Study, number: int) -> Any:
    optuna = load_optuna()
    config = study.sampler
    seed = _derived_seed(study.seed, number, "sampler", 2**32)
    if config["type"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config["type"] == "grid":
        # The grid sampler shuffles the whole grid once, when made: one seed for the study, not one per trial.
        grid = {name: [_encode(c) for c in param["choices"]] for name, param in study.space.items()}
        return optuna.samplers.GridSampler(grid, seed=_derived_seed(study.seed, 0, "grid", 2**32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        multivariate = bool(config.get("multivariate", False))
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=config.get("n_startup_trials", 10),
            multivariate=multivariate,
            group=multivariate,
        )


def _pruner(config: dict[str, Any]) -> Any:
    optuna = load_optuna()
    kind = config["type"]
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.get("n_startup_trials", 5), n_warmup_steps=config.get("n_warmup_steps", 0)
        )
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.get("min_resource") or "auto",
            reduction_factor=config.get("reduction_factor", 4),
            min_early_stopping_rate=config.get("min_early_stopping_rate", 0),
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.get("min_resource", 1),
            max_resource=config.get("max_resource") or "auto",
            reduction_factor=config.get("reduction_factor", 3),
        )
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class TrialRow:
    """A trial as the study reads it: its row, its job (None for a suggestion that was never a valid spec),
    its learning curve and result."""

    trial: StudyTrial
    job: Job | None
    curve: dict[int, float]  # epoch -> validation accuracy
    model: Model | None

    @property
    def status(self) -> JobStatus:
        return self.job.status if self.job is not None else JobStatus.failed

    @property
    def error(self) -> str | None:
        return self.job.error if self.job is not None else self.trial.error

    @property
    def epochs_done(self) -> int:
        return self.job.epochs_done if self.job is not None else 0

    @property
    def epochs(self) -> int:
        """The epochs the trial's spec runs (0 for a trial that never became a job)."""
        return int(self.job.spec["epochs"]) if self.job is not None else 0

    @property
    def value(self) -> float | None:
        """The objective: the kept model's validation accuracy (None until the trial succeeded)."""
        if self.status is not JobStatus.succeeded:
            return None
        if self.model is not None and self.model.val_acc is not None:
            return self.model.val_acc
        return self.curve[max(self.curve)] if self.curve else None


def _trial_rows(session: Session, study_id: str) -> list[TrialRow]:
    pairs = session.execute(
        select(StudyTrial, Job)
        .outerjoin(Job, Job.id == StudyTrial.job_id)
        .where(StudyTrial.study_id == study_id)
        .order_by(StudyTrial.number)
    ).all()
    ids = [job.id for _trial, job in pairs if job is not None]
    curves: dict[str, dict[int, float]] = {job_id: {} for job_id in ids}
    models: dict[str, Model] = {}
    if ids:
        for job_id, epoch, val_acc in session.execute(
            select(EpochMetric.job_id, EpochMetric.epoch, EpochMetric.val_acc).where(EpochMetric.job_id.in_(ids))
        ):
            if val_acc is not None:
                curves[job_id][epoch] = val_acc
        models = {m.job_id: m for m in session.scalars(select(Model).where(Model.job_id.in_(ids)))}
    return [
        TrialRow(trial, job, curves[job.id] if job else {}, models.get(job.id) if job else None) for trial, job in pairs
    ]


def _frozen(optuna: Any, row: TrialRow, distributions: dict[str, Any]) -> Any:
    state = optuna.trial.TrialState
    status = row.status
    value = row.value
    if status is JobStatus.succeeded and value is not None:
        trial_state = state.COMPLETE
    elif status is JobStatus.pruned:
        trial_state = state.PRUNED
    elif status in LIVE:
        trial_state = state.RUNNING
    else:
        trial_state, value = state.FAIL, None
    params = {
        name: _encode(v) if isinstance(distributions[name], optuna.distributions.CategoricalDistribution) else v
        for name, v in row.trial.params.items()
    }
    frozen = optuna.trial.create_trial(
        state=trial_state,
        value=value if trial_state is state.COMPLETE else None,
        params=params,
        distributions={name: distributions[name] for name in params},
        intermediate_values=dict(row.curve),
        system_attrs=dict(row.trial.system_attrs),
    )
    return frozen


def optuna_study(study: Study, rows: list[TrialRow]) -> optuna.Study:
    """The study as Optuna sees it, rebuilt in memory from the rows (trial ``k`` of ``rows`` is Optuna's
    trial ``k``). Its sampler is the one for the next trial; ``ask_trials`` replaces it per trial."""
    optuna = load_optuna()
    distributions = _distributions(study.space)
    rebuilt = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        study_name=study.id,  # Hyperband's brackets hash it with the trial number
        direction="maximize",
        sampler=_sampler(study, len(rows)),
        pruner=_pruner(study.pruner),
    )
    for row in rows:
        rebuilt.add_trial(_frozen(optuna, row, distributions))
    return rebuilt


def _suggest(trial: Any, study: Study, base_values: dict[str, Any]) -> dict[str, Any]:
    """Asks ``trial`` for every parameter whose condition holds, in the space's order; the decoded values."""
    values = dict(base_values)
    params: dict[str, Any] = {}
    for name, param in study.space.items():
        if not _condition_holds(param.get("when"), values):
            continue
        if "choices" in param:
            value = json.loads(trial.suggest_categorical(name, [_encode(c) for c in param["choices"]]))
        elif _field_kind(name) == "int":
            value = trial.suggest_int(
                name, param["low"], param["high"], log=param.get("log", False), step=param.get("step") or 1
            )
        else:
            value = trial.suggest_float(
                name, param["low"], param["high"], log=param.get("log", False), step=param.get("step")
            )
        params[name] = value
        values[name] = value
    return params


# -- creating, advancing, pruning -----------------------------------------------------------------------------


def new_study_row(
    *,
    study_id: str,
    preset: str | None,
    base: dict[str, Any],
    space: dict[str, Any],
    sampler: dict[str, Any],
    pruner: dict[str, Any],
    n_trials: int,
    max_concurrent: int,
    seed: int,
    max_attempts: int,
    stamp: dict[str, Any],
) -> Study:
    return Study(
        id=study_id,
        status=StudyStatus.running,
        base={**base, **({"preset": preset} if preset else {})},
        space=space,
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        max_concurrent=max_concurrent,
        seed=seed,
        max_attempts=max_attempts,
        created_at=utcnow(),
        **stamp,
    )


def _lock(session: Session, study_id: str) -> Study | None:
    # FOR UPDATE on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises writers): one decision at a time.
    return session.get(Study, study_id, with_for_update=True, populate_existing=True)


def ask_trials(session: Session, study: Study, new_job: Any) -> list[Job]:
    """Tops the study up, in the caller's write transaction with the study locked: asks the sampler for as many
    trials as ``max_concurrent`` and the budget allow, queueing one job each; completes the study when every
    trial has ended. ``new_job(spec, created_at, **columns)`` makes a queued job row. Returns the new jobs.

    A suggestion that the spec's cross-field rules refuse (nesterov without momentum, a run over the size
    ceiling) fails as it is asked: a trial with no job and an ``error``, so the sampler learns nothing from it
    and the budget moves on; the next trial is asked in its place."""
    rows = _trial_rows(session, study.id)
    live = sum(row.status in LIVE for row in rows)
    number = len(rows)
    jobs: list[Job] = []
    if number < study.n_trials and live < study.max_concurrent:
        optuna = load_optuna()
        preset = study.base.get("preset")
        base = {k: v for k, v in study.base.items() if k != "preset"}
        base_values = _base_values(preset, base)
        rebuilt = optuna_study(study, rows)
        now = db_now(session)
        while number < study.n_trials and live + len(jobs) < study.max_concurrent:
            rebuilt.sampler = _sampler(study, number)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                trial = rebuilt.ask()
                params = _suggest(trial, study, base_values)
            assert trial.number == number, (trial.number, number)
            attrs = rebuilt.trials[number].system_attrs
            explicit = {**base, **params}
            if "seed" not in explicit:
                explicit["seed"] = _derived_seed(study.seed, number, "job", MAX_SEED)
            try:
                spec = validated_spec(preset, explicit, loc=("body", "space"))
            except InvalidSpec as exc:
                error = "the suggested parameters do not make a valid spec: " + "; ".join(
                    f"{'.'.join(map(str, e['loc'][2:])) or 'spec'}: {e['msg']}" for e in exc.errors
                )
                rebuilt.tell(trial, state=optuna.trial.TrialState.FAIL)
                session.add(
                    StudyTrial(
                        study_id=study.id, number=number, job_id=None, params=params, system_attrs=attrs, error=error
                    )
                )
                log.warning("study %s: trial %d failed as asked: %s", study.id, number, error)
            else:
                # Distinct creation times keep the order of suggestion in the queue (claims take the oldest first).
                job = new_job(spec, now + timedelta(microseconds=len(jobs)), study_id=study.id)
                session.add(job)
                session.flush()
                session.add(
                    StudyTrial(study_id=study.id, number=number, job_id=job.id, params=params, system_attrs=attrs)
                )
                jobs.append(job)
            number += 1
        session.flush()
    if number >= study.n_trials and live + len(jobs) == 0 and study.status == StudyStatus.running:
        study.status = StudyStatus.completed
        study.finished_at = db_now(session)
        log.info("study %s: completed (%d trials)", study.id, number)
    return jobs


def advance(db: Database, study_id: str, job_maker: Callable[[Study], Any]) -> list[Job]:
    """``ask_trials`` in a transaction of its own, when the study needs it (a read decides, cheaply, first);
    ``job_maker(study)`` gives ``ask_trials`` its ``new_job``."""
    with db.read() as session:
        study = session.get(Study, study_id)
        if study is None or study.status != StudyStatus.running:
            return []
        counts = dict(
            session.execute(
                select(Job.status, func.count())
                .select_from(StudyTrial)
                .outerjoin(Job, Job.id == StudyTrial.job_id)
                .where(StudyTrial.study_id == study_id)
                .group_by(Job.status)
            ).all()
        )
    asked = sum(counts.values())
    live = sum(counts.get(status, 0) for status in LIVE)
    if asked < study.n_trials and live >= study.max_concurrent:
        return []
    if asked >= study.n_trials and live > 0:
        return []
    load_optuna()
    with db.write() as session:
        locked = _lock(session, study_id)
        if locked is None or locked.status != StudyStatus.running:
            return []
        return ask_trials(session, locked, job_maker(locked))


def running_study_ids(db: Database) -> list[str]:
    with db.read() as session:
        return list(
            session.scalars(select(Study.id).where(Study.status == StudyStatus.running).order_by(Study.created_at))
        )


def should_prune(db: Database, job_id: str, epoch: int) -> bool:
    """Whether the study's pruner stops this trial after ``epoch`` (its validation accuracy recorded). The
    pruner's own bookkeeping (successive halving's rungs) is stored with the trial in the same transaction."""
    load_optuna()
    with db.write() as session:
        trial = session.scalars(select(StudyTrial).where(StudyTrial.job_id == job_id)).one_or_none()
        if trial is None:
            return False
        study = _lock(session, trial.study_id)
        if study is None or study.status != StudyStatus.running:
            return False
        rows = _trial_rows(session, study.id)
        row = rows[trial.number]
        if row.status is not JobStatus.running or epoch not in row.curve:
            return False  # an ended trial, or no validation accuracy for this epoch: nothing to judge
        # Judged at ``epoch``: the pruner reads the trial's last step.
        rows[trial.number] = TrialRow(row.trial, row.job, {e: v for e, v in row.curve.items() if e <= epoch}, row.model)
        rebuilt = optuna_study(study, rows)
        frozen = rebuilt.trials[trial.number]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune = bool(rebuilt.pruner.prune(rebuilt, frozen))
        attrs = rebuilt.trials[trial.number].system_attrs
        if attrs != trial.system_attrs:
            trial.system_attrs = attrs
    return prune


def record_pruned(session: Session, job_id: str, epoch: int) -> None:
    """Notes the epoch a trial was pruned at (``queue.prune_claimed_job`` calls it as the job ends)."""
    session.execute(update(StudyTrial).where(StudyTrial.job_id == job_id).values(pruned_at_epoch=epoch))


# -- reading --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyView:
    study: Study
    rows: list[TrialRow]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(row.status.value for row in self.rows))

    @property
    def best(self) -> TrialRow | None:
        """The succeeded trial with the highest objective; the earliest of equals."""
        done = [row for row in self.rows if row.value is not None]
        return max(done, key=lambda row: (row.value, -row.trial.number)) if done else None


def get_study(db: Database, study_id: str) -> StudyView:
    with db.read() as session:
        study = session.get(Study, study_id) if valid_key(study_id) else None
        if study is None:
            raise StudyNotFound(study_id)
        return StudyView(study, _trial_rows(session, study_id))


def rebuilt_study(db: Database, study_id: str) -> tuple[StudyView, optuna.Study]:
    """The study and its Optuna twin (for the figures: importances need Optuna's evaluator)."""
    view = get_study(db, study_id)
    return view, optuna_study(view.study, view.rows)


def list_studies(db: Database, limit: int, offset: int, owner: str | None = None) -> tuple[list[str], int]:
    """A page of study ids, newest first, and how many there are; only ``owner``'s when given."""
    mine = [Study.owner == owner] if owner is not None else []
    with db.read() as session:
        ids = session.scalars(
            select(Study.id).where(*mine).order_by(Study.created_at.desc()).limit(limit).offset(offset)
        ).all()
        total = session.scalar(select(func.count()).select_from(Study).where(*mine)) or 0
    return list(ids), total
