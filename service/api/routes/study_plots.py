"""A study's figures (service.jobs.studies): its optimisation history, its parameters' importances and its trials
in parallel coordinates, as SVG.

A running study's figures change with every epoch its trials record, so each carries ``Cache-Control:
no-cache`` and an ETag computed from what it is drawn from (the trials' statuses, parameters, learning curves
and results): a client revalidates, and gets a 304 without a render (nor, for the importances, Optuna's
evaluator) while the study stands still. Rendering runs in the thread pool, as the routes are plain functions.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from service import plots
from service.api.deps import DatabaseDep
from service.api.routes.plots import REVALIDATE, SVG, _etag, _figure, documented
from service.jobs import studies
from service.jobs.status import JobStatus
from service.jobs.studies import StudyView

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/studies", tags=["studies"])

NO_STUDY = {404: "No study with this id."}
# fANOVA fits a random forest to the succeeded trials; measured on scripted studies (random sampler, one of
# three parameters, categorical or continuous, deciding the score, 10 seeds each), it ranked the deciding
# parameter first in 28 of 30 studies of 8 trials and in 30 of 30 from 12. Optuna's default evaluator,
# PED-ANOVA, did in 13 of 30 at 8 trials and 21 of 30 at 16 (it compares the top 10% of the trials with all
# of them, so a small study's top part is one trial).
MIN_IMPORTANCE_TRIALS = 8
# The order a figure's title counts the trials in.
COUNTED = (
    JobStatus.succeeded,
    JobStatus.pruned,
    JobStatus.failed,
    JobStatus.cancelled,
    JobStatus.running,
    JobStatus.queued,
)


@router.get("/{study_id}/history.svg", response_class=Response, responses=documented(SVG, NO_STUDY))
def study_history_svg(study_id: str, db: DatabaseDep, request: Request) -> Response:
    """Validation accuracy per trial in the order suggested: succeeded trials as points, pruned ones as crosses
    at the last validation accuracy they recorded, and the best so far as a step line."""
    view = studies.get_study(db, study_id)
    trials, title = _results(view), _title(view)
    etag = _etag("study-history", view.study.id, title, [dataclasses.astuple(trial) for trial in trials])
    return _figure(request, etag, "svg", REVALIDATE, lambda: plots.optimization_history(trials, title=title))


@router.get("/{study_id}/importances.svg", response_class=Response, responses=documented(SVG, NO_STUDY))
def study_importances_svg(study_id: str, db: DatabaseDep, request: Request) -> Response:
    """Each searched parameter's importance to the validation accuracy, from Optuna's fANOVA evaluator
    (Hutter et al., ICML 2014) over the succeeded trials; with too few of them (fewer than 8) or fewer than
    two parameters varied, a figure that says so."""
    view = studies.get_study(db, study_id)
    trials, title = _results(view), _title(view)
    etag = _etag(
        "study-importances",
        _optuna_version(),
        view.study.id,
        view.study.space,
        title,
        [dataclasses.astuple(trial) for trial in trials],
    )

    def render() -> bytes:
        found, unavailable = importances(studies.optuna_study(view.study, view.rows))
        return plots.param_importances(found, title=title, unavailable=unavailable)

    return _figure(request, etag, "svg", REVALIDATE, render)


@router.get("/{study_id}/parallel.svg", response_class=Response, responses=documented(SVG, NO_STUDY))
def study_parallel_svg(study_id: str, db: DatabaseDep, request: Request) -> Response:
    """The trials in parallel coordinates: an axis per searched parameter (log-scaled or labelled choices as
    the space says) and one for validation accuracy; succeeded trials coloured by it, pruned ones grey."""
    view = studies.get_study(db, study_id)
    trials, title = _results(view), _title(view)
    space = view.study.space
    etag = _etag("study-parallel", view.study.id, space, title, [dataclasses.astuple(trial) for trial in trials])
    return _figure(request, etag, "svg", REVALIDATE, lambda: plots.parallel_coordinates(trials, space, title=title))


def importances(optuna_study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """The parameters' importances, most important first, as ``optuna.importance.get_param_importances``
    computes them with ``FanovaImportanceEvaluator(seed=0)`` (fANOVA: Hutter, Hoos and Leyton-Brown, "An
    Efficient Approach for Assessing Hyperparameter Importance", ICML 2014: a random forest fitted to the
    objective, its variance split among the parameters), normalised to sum to 1; or none, and why, when they
    would mean nothing: fewer than ``MIN_IMPORTANCE_TRIALS`` succeeded trials, fewer than two parameters that
    varied among them, or all of them scoring the same."""
    import optuna

    complete = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    count = len(complete)
    if count < MIN_IMPORTANCE_TRIALS:
        return {}, (
            f"needs at least {MIN_IMPORTANCE_TRIALS} succeeded trials ({count} so far):\n"
            "fANOVA fits a random forest to them"
        )
    names = sorted({name for trial in complete for name in trial.params})
    # A conditional parameter that some trials lack varies too: Optuna weighs its being there or not.
    varied = [name for name in names if len({repr(trial.params.get(name)) for trial in complete}) > 1]
    if len(varied) < 2:
        which = f"only {varied[0]}" if varied else "no parameter"
        return {}, f"{which} varied among the {count} succeeded trials:\nimportances rank two or more parameters"
    if len({trial.value for trial in complete}) == 1:
        return {}, f"all {count} succeeded trials scored the same:\nno parameter made a difference"
    try:
        with warnings.catch_warnings():
            # Its warnings (a regime of a conditional parameter with too few trials...) are advice for a
            # notebook; the tests turn warnings into errors.
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                optuna_study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
    except Exception as exc:  # Optuna's internals: a figure that says so rather than a 500
        log.warning("study %s: parameter importances failed: %r", optuna_study.study_name, exc)
        return {}, f"Optuna could not compute the importances:\n{type(exc).__name__}"
    return dict(found), None


def _results(view: StudyView) -> list[plots.TrialResult]:
    return [
        plots.TrialResult(
            number=row.trial.number,
            status=row.status.value,
            params=row.trial.params,
            value=row.value,
            curve=dict(sorted(row.curve.items())),
            pruned_at_epoch=row.trial.pruned_at_epoch,
        )
        for row in view.rows
    ]


def _title(view: StudyView) -> str:
    counts = view.counts
    shown = ", ".join(f"{counts[status.value]} {status.value}" for status in COUNTED if counts.get(status.value))
    head = f"study {view.study.id[:8]}, {len(view.rows)} of {view.study.n_trials} trials"
    return f"{head}: {shown}" if shown else head


def _optuna_version() -> str:
    import optuna

    return str(optuna.__version__)
