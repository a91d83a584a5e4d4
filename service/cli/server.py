"""The ``fmnist`` command: run the API, run workers, migrate the database."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
import sys
from enum import StrEnum
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from service.cli import gc as cli_gc
from service.cli import remote as cli_remote
from service.cli import sample as cli_sample
from service.cli import transfer as cli_transfer
from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

    from service.api.routes.events import EventStreams
    from service.logs import LogFormat

# The top-level help, as gh and docker write theirs: a usage line, then the commands by group, one line each.
COMMAND_GROUPS: dict[str, dict[str, str]] = {
    "Run the service": {
        "up": "Migrate the database, then run the API and a worker",
        "serve": "Run the HTTP API",
        "worker": "Run a worker that trains the queued jobs",
        "db": "Upgrade the database schema, or show its revision",
        "keys": "Create, list and revoke API keys",
        "gc": "Remove what the retention policy does not keep",
        "export": "Write the whole service to a folder (rows, checkpoints, checksums)",
        "import": "Take in a folder `fmnist export` wrote, into an empty database",
    },
    "Train": {
        "submit": "Queue a training job",
        "jobs": "List jobs, filtered and sorted",
        "status": "Show a job",
        "wait": "Follow a job until it ends",
        "metrics": "Show a job's per-epoch metrics",
        "tag": "Set a job's tags and note",
        "cancel": "Cancel a job",
        "delete-job": "Delete an ended job and its model",
        "sweep": "Submit, show, list and cancel grid searches",
        "study": "Run adaptive searches (Optuna)",
    },
    "Models and predictions": {
        "sample": "Write test images as PNG files (no server needed)",
        "predict": "Classify images with a trained model",
        "models": "List trained models",
        "eval": "Show a model's evaluation",
        "card": "Show a model's card",
        "alias": "Set, list and remove model aliases",
    },
}


class CommandGroups(TyperGroup):
    """The ``fmnist`` group, whose help lists its commands by ``COMMAND_GROUPS``, one line each."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The usage line, the description, the commands group by group (one not in ``COMMAND_GROUPS`` under
        "Other commands", with its own short help), the options, and where to read more."""
        shown = {
            name: command
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        }
        others = {
            name: command.get_short_help_str(limit=60)
            for name, command in shown.items()
            if not any(name in group for group in COMMAND_GROUPS.values())
        }
        groups = {**COMMAND_GROUPS, "Other commands": others}
        width = max(len(name) for name in shown) + 3
        lines = [f"Usage: {ctx.command_path} COMMAND [ARGS]...", "", self.help or ""]
        for title, summaries in groups.items():
            rows = [f"  {name:<{width}}{summary}" for name, summary in summaries.items() if name in shown]
            if rows:
                lines += ["", f"{title}:", *rows]
        lines += ["", "Options:", f"  {'--help':<{width}}Show this message and exit."]
        lines += [
            "",
            f"Run `{ctx.command_path} COMMAND --help` for a command's options. The commands that call a server",
            "take --url (or FMNIST_URL) and --api-key (or FMNIST_API_KEY).",
        ]
        formatter.write("\n".join(lines) + "\n")


# rich_markup_mode=None: click's plain help, which names a value's type only where an option takes one (typer's
# rich help, from 0.29 on, shows every flag as taking a `<bool>`), and pads no line to the terminal's width.
app = typer.Typer(
    cls=CommandGroups,
    help="Train multilayer perceptrons on Fashion-MNIST over HTTP and serve their predictions.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(
    help="Database schema: upgrade, current (Alembic migrations).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(
    help="API keys: create, list, revoke (stored hashed).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(keys_app, name="keys")
cli_remote.register(app)  # submit, jobs, wait, predict...: the commands that call a server over HTTP
cli_sample.register(app)  # sample: test images as PNG files, from the local data set
cli_gc.register(app)  # gc: the retention policy, on this host's database and files
cli_transfer.register(app)  # export, import: the whole service as a folder, and back

log = logging.getLogger("service.cli")

HostOption = Annotated[str, typer.Option(help="Address to bind.")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]
DeviceOption = Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.")]
LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning or error.")]
WorkersOption = Annotated[
    int,
    typer.Option(
        min=1,
        max=256,
        help="API processes sharing the port, each with its own model cache and prediction batcher (one core each).",
    ),
]


class LogFormatName(StrEnum):
    text = "text"
    json = "json"


LogFormatOption = Annotated[
    LogFormatName | None,
    typer.Option(help="Log lines as text or as JSON objects with request and job ids (default: FMNIST_LOG_FORMAT)."),
]


def _log_format(option: LogFormatName | None) -> LogFormat:
    return "json" if (option or get_settings().log_format) == "json" else "text"


def ensure_schema() -> None:
    """Creates the schema in an empty database, as `fmnist up` does; exits 2, saying to run `fmnist db upgrade`,
    on a database at an older revision: upgrading one that holds data is the operator's step (once per release,
    from one host, before the new version starts). A database with tables but no revision is someone else's."""
    from sqlalchemy import inspect

    from service.store import migrations
    from service.store.db import create_db_engine

    url = get_settings().sqlalchemy_url
    engine = create_db_engine(url)
    try:
        if migrations.current_revision(engine) is None:
            tables = inspect(engine).get_table_names()
            if tables:
                typer.echo(
                    f"error: the database {_safe_url()} holds tables ({', '.join(sorted(tables)[:5])}) but no "
                    "fmnist schema revision: set FMNIST_HOME or FMNIST_DATABASE_URL to a new or an fmnist database",
                    err=True,
                )
                raise typer.Exit(2)
            _create_schema(url, engine)
        migrations.ensure_current(engine)
    except migrations.SchemaOutOfDate as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()


def _create_schema(url: str, engine: Engine) -> None:
    """Migrates an empty database to the newest revision. Another process starting on the same empty database
    (a worker beside the API) may do so at the same moment: its schema serves as well, so a failure stands only
    while the schema is still not current."""
    from service.store import migrations

    try:
        migrations.upgrade(url)
    except Exception:
        if migrations.current_revision(engine) != migrations.head_revision():
            raise
    log.info("created the database schema (revision %s): %s", migrations.head_revision(), _safe_url())


@app.command()
def serve(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    workers: WorkersOption = 1,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = None,
) -> None:
    """Run the HTTP API (--workers N: N processes on one port)."""
    settings = get_settings()
    # Before torch loads: OpenMP reads it for every thread (torch.set_num_threads reaches only the caller's),
    # and idle OpenMP threads spinning beside the event loop cost the API a third of its throughput.
    os.environ["OMP_NUM_THREADS"] = str(settings.predict_threads)
    import uvicorn

    from service.api.app import create_app
    from service.api.routes.events import StreamClosingServer
    from service.logs import configure_logging

    configure_logging(log_level, _log_format(log_format))
    ensure_schema()
    _refuse_open_network(host, settings)
    if workers > 1:
        _serve_processes(host, port, workers, log_level, _log_format(log_format))
        return
    app = create_app(settings)
    # log_config=None: uvicorn's own lines, the access log included, go through the handler set up above.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,
        timeout_keep_alive=settings.keep_alive_seconds,
    )
    server = StreamClosingServer(config, app.state.event_streams)  # uvicorn.run, but open event streams end on Ctrl-C
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises the signal again once it has stopped
        server.run()
    if not server.started:
        raise typer.Exit(3)  # as uvicorn.run does: the port is taken, or the app did not start


def _serve_processes(host: str, port: int, workers: int, log_level: str, log_format: LogFormat) -> None:
    """``serve --workers N``: uvicorn's supervisor binds the port once and spawns N processes that accept on it,
    and restarts one that dies. Each process is a fresh interpreter that builds its own app
    (``api_process_app``): the settings object reads the same environment there (every ``FMNIST_`` variable
    and OMP_NUM_THREADS, set above, are inherited), and uvicorn sets up each one's logging from ``log_config``."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "service.cli.server:api_process_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        log_config=_log_config(log_level, log_format),
        timeout_keep_alive=get_settings().keep_alive_seconds,
    )
    try:
        socket = config.bind_socket()
    except SystemExit as exc:  # uvicorn has logged why (the port is taken)
        raise typer.Exit(3) from exc
    # uvicorn.run(..., workers=N), but with the outcome: it exits 0 when the processes failed to start.
    supervisor = Multiprocess(config, sockets=[socket])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise typer.Exit(3)


def _log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """What ``configure_logging`` does, as the ``logging.config`` dictionary uvicorn applies in each process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"()": "service.logs.log_handler", "log_format": log_format}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }


def api_process_app() -> FastAPI:
    """The app of one ``serve --workers N`` process: uvicorn calls this factory in each process it spawns."""
    from service.api.app import create_app

    app = create_app(get_settings())
    _end_event_streams_on_exit(app.state.event_streams)
    return app


def _end_event_streams_on_exit(streams: EventStreams) -> None:
    """What StreamClosingServer does in a single process: a signal to stop ends the open event streams first.

    uvicorn's server installs its own handlers before it loads the app (here, in this process's main thread);
    they are wrapped, so the server still stops, and it puts its own back when it has stopped.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        stop = signal.getsignal(signum)

        def close_then_stop(received: int, frame: FrameType | None, stop: Any = stop) -> None:
            streams.close_all()
            if callable(stop):
                stop(received, frame)

        signal.signal(signum, close_then_stop)


def _refuse_open_network(host: str, settings: Settings) -> None:
    """Beyond this machine only with API keys: a stranger must not be able to spend the GPUs."""
    from service.api import auth
    from service.store.db import Database

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return
    db = Database(settings.sqlalchemy_url)
    try:
        protected = auth.has_active_key(db, settings.environment_api_keys)
    finally:
        db.dispose()
    if not protected:
        typer.echo(
            f"error: refusing to listen on {host} with no API key: anyone who can reach it could train and "
            "predict. Create one with `fmnist keys create --name NAME --scope admin` or set FMNIST_API_KEYS; "
            "or listen on 127.0.0.1.",
            err=True,
        )
        raise typer.Exit(2)


@app.command()
def worker(
    device: DeviceOption = "auto",
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queue is empty.")] = False,
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Jobs run at once on the device (small MLPs share a GPU well).")
    ] = 1,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = None,
) -> None:
    """Run a worker: claims queued jobs and trains them. --device all runs one worker per visible GPU."""
    if device != "all":
        _start_trainer_fork_server()
    from models.devices import resolve_device
    from service.logs import configure_logging
    from service.store.db import Database
    from service.worker.worker import WorkerPool

    configure_logging(log_level, _log_format(log_format))
    if device == "all":
        raise typer.Exit(
            _worker_per_gpu(
                burst=burst, concurrency=concurrency, log_level=log_level, log_format=_log_format(log_format)
            )
        )
    try:
        resolved = resolve_device(device)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    ensure_schema()
    settings = get_settings()
    db = Database(settings.sqlalchemy_url)
    pool = WorkerPool(settings, db, resolved, concurrency=concurrency, burst=burst)
    pool.install_signal_handlers()
    pool.preload()
    try:
        code = pool.run()
    finally:
        db.dispose()
    raise typer.Exit(code)


def _start_trainer_fork_server() -> None:
    """Starts the fork server the trainer process will come from (service/worker/trainer.py) and returns at
    once: its import of torch then runs beside this process's own, instead of after it."""
    import multiprocessing
    import multiprocessing.forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", "service.worker.fork_server"])
    multiprocessing.forkserver.ensure_running()


def _worker_per_gpu(*, burst: bool, concurrency: int, log_level: str, log_format: LogFormat) -> int:
    """Starts ``fmnist worker --device cuda:N`` for every visible GPU and waits for them all."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        typer.echo("error: --device all found no CUDA device; use --device cpu", err=True)
        return 2
    ensure_schema()
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "worker",
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
        "--log-format",
        log_format,
    ]
    children = [
        subprocess.Popen(
            [*command, "--device", f"cuda:{index}", *(["--burst"] if burst else [])], start_new_session=True
        )
        for index in range(count)
    ]
    log.info("started %d workers, one per GPU", count)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)


@app.command()
def up(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    device: DeviceOption = "auto",
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = None,
) -> None:
    """Migrate the database, then run the API and one worker together; Ctrl-C stops both."""
    from service.store import migrations

    settings = get_settings()
    migrations.upgrade(settings.sqlalchemy_url)
    worker_process = subprocess.Popen(
        [
            *[sys.executable, "-m", "service.cli", "worker", "--device", device],
            *["--log-level", log_level, "--log-format", _log_format(log_format)],
        ],
        # Its own session: a terminal's Ctrl-C reaches only this process, which then stops the worker once.
        start_new_session=True,
    )
    try:
        serve(host=host, port=port, log_level=log_level, log_format=log_format)
    finally:
        if worker_process.poll() is None:
            worker_process.send_signal(signal.SIGTERM)
            try:
                worker_process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker_process.kill()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scope: Annotated[list[str], typer.Option(help="train, predict or admin (admin: everything); repeat for several.")],
) -> None:
    """Create an API key. It is printed once: store it now; only its hash is kept."""
    from service.api import auth
    from service.store.db import Database

    ensure_schema()
    db = Database(get_settings().sqlalchemy_url)
    try:
        row, key = auth.create_key(db, name, scope)
    except auth.InvalidKeyRequest as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    typer.echo(f"created key {row.id} ({row.name}; scopes: {', '.join(row.scopes)}). Store it now:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never the keys themselves)."""
    from service.api import auth
    from service.store.db import Database

    ensure_schema()
    db = Database(get_settings().sqlalchemy_url)
    try:
        rows = auth.list_keys(db)
    finally:
        db.dispose()
    typer.echo(f"{'id':<14} {'name':<24} {'scopes':<22} {'created':<20} revoked")
    for row in rows:
        revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if row.revoked_at else "-"
        created = row.created_at.strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{row.id:<14} {row.name:<24} {','.join(row.scopes):<22} {created:<20} {revoked}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `fmnist keys list`).")]) -> None:
    """Revoke an API key: servers refuse it within two seconds."""
    from service.api import auth
    from service.store.db import Database

    ensure_schema()
    db = Database(get_settings().sqlalchemy_url)
    try:
        row = auth.revoke_key(db, key_id)
    except auth.KeyNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        db.dispose()
    typer.echo(f"revoked key {row.id} ({row.name})")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from service.store import migrations

    settings = get_settings()
    migrations.upgrade(settings.sqlalchemy_url, revision)
    typer.echo(f"database at {migrations.head_revision() if revision == 'head' else revision}: {_safe_url()}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one this code knows."""
    from service.store import migrations
    from service.store.db import create_db_engine

    engine = create_db_engine(get_settings().sqlalchemy_url)
    try:
        typer.echo(f"current: {migrations.current_revision(engine)}  head: {migrations.head_revision()}")
    finally:
        engine.dispose()


def _safe_url() -> str:
    from sqlalchemy import make_url

    return make_url(get_settings().sqlalchemy_url).render_as_string(hide_password=True)
