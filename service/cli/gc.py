"""``fmnist gc``: the retention policy (service.jobs.retention), run on this host against the database and
FMNIST_HOME, as ``fmnist db upgrade`` is; ``POST /v1/admin/gc`` runs the same over HTTP."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from service.settings import get_settings

if TYPE_CHECKING:
    from service.jobs import retention

DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Report what would be removed; remove nothing.")]
KeepBestOption = Annotated[
    int | None,
    typer.Option(
        "--keep-best",
        min=1,
        max=100_000,
        help="Models each sweep and ended study keeps, best first (default: FMNIST_GC_KEEP_BEST).",
        show_default=False,
    ),
]
KeepLatestOption = Annotated[
    int | None,
    typer.Option(
        "--keep-latest",
        min=0,
        max=100_000,
        help="Newest models each sweep and ended study keeps as well (default: FMNIST_GC_KEEP_LATEST).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON (as POST /v1/admin/gc answers).")]


def collect_garbage(
    dry_run: DryRunOption = False,
    keep_best: KeepBestOption = None,
    keep_latest: KeepLatestOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove what the retention policy does not keep: in each sweep and ended study, the models outside the best
    and the newest (never one an alias serves), with their checkpoints and ONNX exports; resume states of ended
    jobs; artifact records whose model or job is gone; checkpoint files no model names (an hour old); temporary
    files of interrupted writes. Artifacts go whether kept in the database or in FMNIST_HOME (FMNIST_ARTIFACTS).
    Lone jobs keep their models (`fmnist delete-job` removes one). Exits 2 when the database's schema is not
    current."""
    from service.api.routes.admin import GarbageReportPublic
    from service.jobs import retention
    from service.store import migrations
    from service.store.artifacts import ArtifactStore
    from service.store.db import Database

    settings = get_settings()
    policy = retention.RetentionPolicy(
        keep_best=settings.gc_keep_best if keep_best is None else keep_best,
        keep_latest=settings.gc_keep_latest if keep_latest is None else keep_latest,
    )
    db = Database(settings.sqlalchemy_url)
    try:
        try:
            migrations.ensure_current(db.engine)
        except migrations.SchemaOutOfDate as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        report = retention.collect_garbage(db, ArtifactStore.for_settings(settings), policy, dry_run=dry_run)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(GarbageReportPublic.from_report(report, policy).model_dump(mode="json"), indent=2))
        return
    _print_report(report, policy)


def _print_report(report: retention.GarbageReport, policy: retention.RetentionPolicy) -> None:
    verb = "would remove" if report.dry_run else "removed"
    typer.echo(
        f"{verb} {_counted(len(report.models), 'model')} (keeping the best {policy.keep_best} and the newest "
        f"{policy.keep_latest} of each sweep and ended study), {_counted(report.resume_states, 'resume state')} "
        f"of ended jobs, {_counted(len(report.orphan_files), 'orphaned checkpoint file')}, "
        f"{_counted(len(report.temporary_files), 'temporary file')}; "
        f"{_counted(len(report.artifacts), 'artifact record')}: {report.bytes:,} bytes"
    )
    for model in report.models:
        group = f"sweep {model.sweep_id}" if model.sweep_id else f"study {model.study_id}"
        typer.echo(f"  model {model.id} (job {model.job_id}, {group})")
    for job_id in report.resume_job_ids:
        typer.echo(f"  resume states of job {job_id}")
    for artifact in report.artifacts:
        where = f"file {artifact.file}" if artifact.file else "in the database"
        typer.echo(f"  {artifact.kind.value} {artifact.name} ({where}, {artifact.size_bytes:,} bytes)")
    for name in (*report.model_files, *report.resume_files, *report.orphan_files, *report.temporary_files):
        typer.echo(f"  file {name}")


def _counted(count: int, noun: str) -> str:
    return f"{count:,} {noun if count == 1 else noun + 's'}"


def register(app: typer.Typer) -> None:
    """Adds ``gc`` to the ``fmnist`` command."""
    app.command("gc")(collect_garbage)
