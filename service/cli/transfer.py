"""``fmnist export PATH`` and ``fmnist import PATH``: the whole service as a folder, and back (service/transfer.py).

Both work on this host's database (``FMNIST_DATABASE_URL`` or the home's SQLite) and artifact store, like
``fmnist db upgrade``: no server needed. An export reads each checkpoint where it was kept (a file in this home, or
the database); an import keeps them where ``FMNIST_ARTIFACTS`` says (``folder``: this home's ``checkpoints/``;
``database``: the database). An import goes into an empty database at the same schema revision, SQLite or
PostgreSQL alike (a new home's database is created first).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.settings import get_settings

if TYPE_CHECKING:
    from service.store.artifacts import ArtifactStore
    from service.store.db import Database
    from service.transfer import TransferSummary

TargetArgument = Annotated[Path, typer.Argument(help="A new folder to write (it must not exist, or be empty).")]
SourceArgument = Annotated[Path, typer.Argument(help="A folder `fmnist export` wrote.")]


def export_command(target: TargetArgument) -> None:
    """Write every job, epoch metric, sweep, study, model (with its checkpoint), alias and API key (its hash only)
    to a new folder, with a manifest of sha256 checksums. Exits 2 when it cannot (the reason on one line)."""
    from service.transfer import export_service

    summary = _on_this_host(export_service, target)
    typer.echo(f"exported {_rows(summary.rows)} and {_counted(summary.checkpoints, 'checkpoint')} to {target}")


def import_command(source: SourceArgument) -> None:
    """Take in a folder `fmnist export` wrote, into this host's empty database, the checkpoints kept where
    FMNIST_ARTIFACTS says, after checking every file against the manifest. Exits 2, changing nothing, when it
    cannot (the reason on one line)."""
    from service.cli.server import ensure_schema
    from service.transfer import import_service

    ensure_schema()  # a new home's empty database is created, as `fmnist serve` does; an older one is refused
    summary = _on_this_host(import_service, source)
    typer.echo(f"imported {_rows(summary.rows)} and {_counted(summary.checkpoints, 'checkpoint')} from {source}")


def _on_this_host(
    operation: Callable[[Database, ArtifactStore, Path], TransferSummary], folder: Path
) -> TransferSummary:
    """``operation`` on this host's database and artifact store; a ``TransferError`` becomes one line, exit 2."""
    from service.store.artifacts import ArtifactStore
    from service.store.db import Database
    from service.transfer import TransferError

    settings = get_settings()
    db = Database(settings.sqlalchemy_url)
    try:
        return operation(db, ArtifactStore.for_settings(settings), folder)
    except TransferError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        db.dispose()


def _counted(count: int, noun: str) -> str:
    return f"{count:,} {noun if count == 1 else noun + 's'}"


def _rows(rows: dict[str, int]) -> str:
    return _counted(sum(rows.values()), "row") + f" ({', '.join(f'{name} {n}' for name, n in rows.items() if n)})"


def register(app: typer.Typer) -> None:
    """Adds ``export`` and ``import`` to the ``fmnist`` command."""
    app.command("export")(export_command)
    app.command("import")(import_command)
