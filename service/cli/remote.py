"""The ``fmnist`` commands that talk to a running server over HTTP: submit, jobs, wait, predict, models...

Each takes ``--url`` and ``--api-key`` (or FMNIST_URL and FMNIST_API_KEY) and ``--json`` for scripts; tables
otherwise. Exit codes are the ``ExitCode`` values, the same for every command.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum, IntEnum
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from models.presets import PresetName
from models.spec import TrainingSpec
from service.client import (
    DEFAULT_URL,
    ApiError,
    Client,
    Forbidden,
    NotFound,
    ServerError,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
)
from service.jobs.status import JobStatus
from service.schemas import (
    EpochMetricsPublic,
    JobPublic,
    PredictionFailedPublic,
    PredictionPublic,
    SweepPublic,
    image_location,
)


class ExitCode(IntEnum):
    ok = 0
    job_not_succeeded = 1  # wait, submit --wait: the job (or a sweep's job) ended failed or cancelled
    invalid = 2  # usage, or a request the server refused (4xx other than those below)
    not_found = 3
    auth = 4  # 401 or 403
    unreachable = 5  # no answer, or a 5xx
    timeout = 6  # --timeout passed before the job ended


EXIT_CODES = (
    "Exit codes: 0 ok; 1 the job (or a job of the sweep) ended failed or cancelled; 2 usage error, "
    "invalid request, or (predict) an image the server could not use; 3 not found; 4 missing or refused API "
    "key; 5 server unreachable or server error; 6 --timeout passed first."
)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="FMNIST_URL", help="The server's base URL.", rich_help_panel="Connection")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="FMNIST_API_KEY", help="API key, when the server needs one.", rich_help_panel="Connection"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", min=0, help="Give up waiting after this many seconds (exit 6).")
]
PresetOption = Annotated[
    str | None,
    typer.Option("--preset", help=f"Start from a named spec: {', '.join(get_args(PresetName))}.", show_default=False),
]
SpecFileOption = Annotated[
    Path | None,
    typer.Option("--spec", exists=True, dir_okay=False, help="A JSON file with spec fields; flags override it."),
]

stdout = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)  # messages stay one line for scripts that read them

alias_app = typer.Typer(help="Model aliases (`production`, ...).", no_args_is_help=True)
sweep_app = typer.Typer(help="Sweeps: a grid of specs submitted, ranked and cancelled together.", no_args_is_help=True)


# -- plumbing -----------------------------------------------------------------------------------------


@contextmanager
def connected(url: str, api_key: str | None) -> Iterator[Client]:
    """A client for the command; the client's errors become a message on stderr and an exit code."""
    try:
        with Client(url, api_key=api_key) as client:
            yield client
    except ServerUnreachable as exc:
        raise _fail(f"{exc} (is `fmnist serve` running there? set --url or FMNIST_URL)", ExitCode.unreachable) from exc
    except (Unauthorized, Forbidden) as exc:
        hint = "" if api_key else " (set --api-key or FMNIST_API_KEY)"
        raise _fail(f"{exc}{hint}", ExitCode.auth) from exc
    except NotFound as exc:
        raise _fail(str(exc), ExitCode.not_found) from exc
    except ServerError as exc:
        raise _fail(str(exc), ExitCode.unreachable) from exc
    except ApiError as exc:
        raise _fail(str(exc), ExitCode.invalid) from exc
    except WaitTimeout as exc:
        raise _fail(str(exc), ExitCode.timeout) from exc


def _fail(message: str, code: ExitCode) -> typer.Exit:
    stderr.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(int(code))


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def titled_table(title: str, columns: tuple[str, ...], no_wrap: tuple[str, ...] = (), **options: Any) -> Table:
    """A table with its title on the left, these columns, and the ``no_wrap`` ones never folded."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=column in no_wrap, **options)
    return table


def _reason(item: PredictionFailedPublic) -> str:
    """An image's error without the server's naming of the image, which the error line replaces with its path."""
    location = image_location(item.index, item.filename) + ": "
    detail = item.error.detail
    return detail[len(location) :] if detail.startswith(location) else detail


def _phrase(status: int) -> str:
    """A status code's reason phrase (`415` -> `Unsupported Media Type`), as error lines show it."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _when(moment: Any) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _layers(hidden: list[int]) -> str:
    return "[" + ",".join(str(width) for width in hidden) + "]"


def _summary(spec: TrainingSpec) -> str:
    return f"{_layers(spec.hidden_layers)} {spec.activation.value} {spec.optimizer.value} lr {spec.lr:g}"


# -- spec flags, generated from TrainingSpec ------------------------------------------------------------


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        options = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def _parse_list(text: str) -> list[Any]:
    """`256,128`, `[256, 128]`, or `` / `[]` for an empty list."""
    text = text.strip()
    if text.startswith("["):
        parsed = json.loads(text)
        if not isinstance(parsed, list):
            raise ValueError("not a list")
        return parsed
    return [json.loads(part) if part.strip() else part for part in text.split(",") if part.strip()]


def _shown(default: Any) -> str:
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, list):
        return ",".join(str(item) for item in default) or "none"
    return "none" if default is None else json.dumps(default)


def _spec_parameter(name: str, annotation: Any, default: Any, description: str | None) -> inspect.Parameter:
    kind = _unwrap_optional(annotation)
    help_text = f"{description or ''} (server default: {_shown(default)})"
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        option = typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False, rich_help_panel="Spec")
        python_type: Any = bool | None
    elif get_origin(kind) is list:
        option = typer.Option(flag, help=f"{help_text}; comma-separated", show_default=False, rich_help_panel="Spec")
        python_type = str | None
    else:
        option = typer.Option(flag, help=help_text, show_default=False, rich_help_panel="Spec")
        python_type = kind | None
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[python_type, option]
    )


SPEC_FIELDS = TrainingSpec.model_fields
SPEC_PARAMETERS = [
    _spec_parameter(name, field.annotation, field.default, field.description) for name, field in SPEC_FIELDS.items()
]


def with_spec_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Adds an option per spec field to ``command`` (it receives them in ``**spec_flags``)."""
    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=[*fixed, *SPEC_PARAMETERS])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return command


def spec_from_flags(spec_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The spec fields given: the file's, then the flags' over them."""
    spec: dict[str, Any] = {}
    if spec_file is not None:
        try:
            loaded = json.loads(spec_file.read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"--spec {spec_file}: {exc}", ExitCode.invalid) from exc
        if not isinstance(loaded, dict):
            raise _fail(f"--spec {spec_file}: expected a JSON object of spec fields", ExitCode.invalid)
        spec.update(loaded)
    for name, value in flags.items():
        if value is None or name not in SPEC_FIELDS:
            continue
        if get_origin(_unwrap_optional(SPEC_FIELDS[name].annotation)) is list:
            try:
                value = _parse_list(value)
            except ValueError as exc:
                flag = "--" + name.replace("_", "-")
                message = f"{flag} {value!r}: use comma-separated numbers, e.g. 256,128 ({exc})"
                raise _fail(message, ExitCode.invalid) from exc
        spec[name] = value.value if isinstance(value, Enum) else value
    return spec


# -- live progress --------------------------------------------------------------------------------------


class ProgressReport:
    """Shows a job's progress on stderr: a live bar on a terminal, one line per epoch elsewhere."""

    def __init__(self, job_id: str, live: bool) -> None:
        self.job_id = job_id
        self.live = live
        self.total = 0
        self._epoch_seconds: list[float] = []
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressReport:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=None),  # what the text leaves
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  train {task.fields[train]}  test {task.fields[test]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=stderr,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.job_id[:8], total=None, loss="-", train="-", test="-", eta="-")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def eta(self, epoch: int) -> str:
        """The epochs left at the mean epoch time so far (an upper bound when early stopping cuts the run)."""
        if not self._epoch_seconds or not self.total:
            return "-"
        seconds = round(max(self.total - epoch, 0) * sum(self._epoch_seconds) / len(self._epoch_seconds))
        return f"{seconds // 60}:{seconds % 60:02d}"

    def status(self, job: JobPublic) -> None:
        self.total = job.progress.epochs
        word = job.status.value + (" (cancel requested)" if job.cancel_requested and not job.status.is_terminal else "")
        if job.attempt > 1 and not job.status.is_terminal:
            word += f", attempt {job.attempt}"
        if self._progress is not None:
            self._progress.update(
                self._task, total=self.total, completed=job.progress.epoch, description=f"{job.id[:8]} {word}"
            )
        else:
            stderr.print(f"job {job.id}: {word}", markup=False, highlight=False)

    def epoch(self, metrics: EpochMetricsPublic) -> None:
        self._epoch_seconds.append(metrics.seconds)
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=metrics.epoch,
                loss=f"{metrics.train_loss:.4f}",
                train=f"{metrics.train_acc:.4f}",
                test=f"{metrics.test_acc:.4f}",
                eta=self.eta(metrics.epoch),
            )
            return
        stderr.print(
            f"epoch {metrics.epoch}/{self.total or '?'}  loss {metrics.train_loss:.4f}  "
            f"train acc {metrics.train_acc:.4f}  test acc {metrics.test_acc:.4f}  ETA {self.eta(metrics.epoch)}",
            markup=False,
            highlight=False,
        )


def follow(client: Client, job_id: str, as_json: bool, timeout: float | None) -> None:
    """Waits for the job with a progress report, prints the outcome, exits 1 unless it succeeded."""
    with ProgressReport(job_id, live=stderr.is_terminal) as report:
        job = client.wait(job_id, on_epoch=report.epoch, on_status=report.status, timeout=timeout)
    if as_json:
        _print_json(job)
    else:
        _print_job(job, client)
    if job.status is not JobStatus.succeeded:
        raise typer.Exit(int(ExitCode.job_not_succeeded))


# -- jobs -----------------------------------------------------------------------------------------------


@with_spec_flags
def submit(
    preset: PresetOption = None,
    spec_file: SpecFileOption = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job until it ends (exit 1 unless it succeeds).")
    ] = False,
    timeout: TimeoutOption = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Resending with the same key cannot queue twice.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
    **spec_flags: Any,
) -> None:
    """Queue a training job: spec flags, a --preset, or a --spec file (flags override both)."""
    spec = spec_from_flags(spec_file, spec_flags)
    with connected(url, api_key) as client:
        job = client.submit(spec, preset=preset, idempotency_key=idempotency_key)
        if wait:
            follow(client, job.id, as_json, timeout)
            return
    if as_json:
        _print_json(job)
    else:
        stdout.print(f"queued job {job.id}: {_summary(job.spec)}, {job.spec.epochs} epochs, seed {job.seed}")


def jobs(
    status: Annotated[JobStatus | None, typer.Option("--status", help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Jobs to skip.")] = 0,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    with connected(url, api_key) as client:
        page = client.list(status, limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    table = titled_table(
        f"jobs {offset + 1}-{offset + len(page.data)} of {page.count}",
        ("id", "status", "epoch", "spec", "epochs", "created", "model"),
        no_wrap=("id", "model", "created"),
    )
    for job in page.data:
        table.add_row(
            job.id,
            job.status.value,
            f"{job.progress.epoch}/{job.progress.epochs}",
            _summary(job.spec),
            str(job.spec.epochs),
            _when(job.created_at),
            job.model_id or "-",
        )
    stdout.print(table)


def _print_job(job: JobPublic, client: Client | None = None) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("id", job.id),
        ("status", job.status.value + (" (cancel requested)" if job.cancel_requested else "")),
        ("progress", f"epoch {job.progress.epoch} of {job.progress.epochs}"),
        ("spec", f"{_summary(job.spec)}, batch {job.spec.batch_size}, {job.spec.epochs} epochs"),
        ("seed", str(job.seed)),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("device", job.device or "-"),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
    ]
    if job.preset:
        rows.append(("preset", job.preset))
    if job.sweep_id:
        rows.append(("sweep", job.sweep_id))
    if job.model_id:
        rows.append(("model", job.model_id))
    if job.error:
        rows.append(("error", job.error))
    if client is not None and job.status is JobStatus.succeeded:
        epochs = client.metrics(job.id).epochs
        if epochs:
            last = epochs[-1]
            rows.append(("last epoch", f"test acc {last.test_acc:.4f}, train acc {last.train_acc:.4f}"))
    for key, value in rows:
        table.add_row(key, value)
    stdout.print(table)


def status(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a job: status, spec, progress, outcome."""
    with connected(url, api_key) as client:
        job = client.get(job_id)
    if as_json:
        _print_json(job)
    else:
        _print_job(job)


def wait(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    timeout: TimeoutOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a job live until it ends: epoch, loss, accuracy, ETA. Exit 1 unless it succeeded."""
    with connected(url, api_key) as client:
        follow(client, job_id, as_json, timeout)


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued or running job (a running one stops at its next batch)."""
    with connected(url, api_key) as client:
        job = client.cancel(job_id)
    if as_json:
        _print_json(job)
    else:
        stdout.print(f"job {job.id}: {job.status.value}" + (" (cancel requested)" if job.cancel_requested else ""))


def metrics(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A job's per-epoch metrics (so far)."""
    with connected(url, api_key) as client:
        result = client.metrics(job_id)
    if as_json:
        _print_json(result)
        return
    table = titled_table(
        f"job {result.job_id}: {result.status.value}",
        ("epoch", "train loss", "train acc", "val acc", "test acc", "lr", "seconds"),
        justify="right",
    )
    for row in result.epochs:
        table.add_row(
            str(row.epoch),
            _fmt(row.train_loss),
            _fmt(row.train_acc),
            _fmt(row.val_acc),
            _fmt(row.test_acc),
            "-" if row.lr is None else f"{row.lr:.4g}",
            f"{row.seconds:.2f}",
        )
    stdout.print(table)


# -- predictions and models ------------------------------------------------------------------------------


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG...).", exists=True, dir_okay=False)],
    model: Annotated[str | None, typer.Option("--model", help="Model id or alias; default: the server's.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=10, help="Classes to list per image.")] = 3,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Classify images with a trained model: a table of the predictions, and one error line per image the
    server could not use (then exit 2, or 5 if the server failed on one)."""
    with connected(url, api_key) as client:
        result = client.predict(list(images), model=model, top_k=top_k)
    failures = [item for item in result.predictions if isinstance(item, PredictionFailedPublic)]
    if as_json:
        body = result.model_dump(mode="json")
        for path, entry in zip(images, body["predictions"], strict=True):
            entry["image"] = str(path)
        _print_json(body)
    elif len(failures) < len(result.predictions):
        table = titled_table(
            f"model {result.model_id}", ("image", "class", "probability", f"top {top_k}"), overflow="fold"
        )
        for path, item in zip(images, result.predictions, strict=True):
            if isinstance(item, PredictionPublic):
                ranked = ", ".join(f"{entry.class_name} {entry.probability:.2f}" for entry in item.top_k)
                table.add_row(str(path), item.class_name, f"{item.probability:.4f}", ranked)
        stdout.print(table)
    for item in failures:
        line = f"error: {images[item.index]}: {item.error.status} {_phrase(item.error.status)}: {_reason(item)}"
        stderr.print(line, markup=False, highlight=False)
    if failures:
        # As if each bad image had been sent alone: the server refused it (2), or failed on it (5).
        server_failed = any(item.error.status >= 500 for item in failures)
        raise typer.Exit(int(ExitCode.unreachable if server_failed else ExitCode.invalid))


def models(
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Models to skip.")] = 0,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List trained models, newest first, with their aliases."""
    with connected(url, api_key) as client:
        page = client.models(limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    table = titled_table(
        f"{page.count} models",
        ("id", "aliases", "summary", "parameters", "test acc", "val acc", "created"),
        no_wrap=("id", "created"),
    )
    for entry in page.models:
        table.add_row(
            entry.id,
            ", ".join(entry.aliases) or "-",
            entry.summary,
            f"{entry.parameters:,}",
            _fmt(entry.test_acc),
            _fmt(entry.val_acc),
            _when(entry.created_at),
        )
    stdout.print(table)


@alias_app.command("set", epilog=EXIT_CODES)
def alias_set(
    name: Annotated[str, typer.Argument(help="The alias, e.g. production.")],
    model: Annotated[str, typer.Argument(help="A model id, or another alias to copy.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point an alias at a model (needs an admin key when the server has keys)."""
    with connected(url, api_key) as client:
        alias = client.set_alias(name, model)
    if as_json:
        _print_json(alias)
    else:
        stdout.print(f"{alias.name} -> {alias.model_id}")


@alias_app.command("list", epilog=EXIT_CODES)
def alias_list(url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """List aliases and the models they point at."""
    with connected(url, api_key) as client:
        aliases = client.aliases()
    if as_json:
        _print_json([alias.model_dump(mode="json") for alias in aliases])
        return
    table = titled_table(
        f"{len(aliases)} aliases", ("alias", "model", "updated"), no_wrap=("alias", "model", "updated")
    )
    for alias in aliases:
        table.add_row(alias.name, alias.model_id, _when(alias.updated_at))
    stdout.print(table)


@alias_app.command("rm", epilog=EXIT_CODES)
def alias_rm(
    name: Annotated[str, typer.Argument(help="The alias.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Remove an alias (the model stays)."""
    with connected(url, api_key) as client:
        client.delete_alias(name)
    stdout.print(f"removed alias {name}")


# -- sweeps ------------------------------------------------------------------------------------------------


def _parse_grid(entries: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for entry in entries:
        name, sep, values = entry.partition("=")
        if not sep or not name.strip():
            raise _fail(
                f"--grid {entry!r}: write FIELD=VALUES, e.g. lr=0.1,0.5 or 'hidden_layers=[[256],[1024]]'",
                ExitCode.invalid,
            )
        values = values.strip()
        try:
            parsed = json.loads(values) if values.startswith("[") else [_scalar(v) for v in values.split(",")]
        except ValueError as exc:
            raise _fail(f"--grid {entry!r}: {exc}", ExitCode.invalid) from exc
        if not isinstance(parsed, list):
            raise _fail(f"--grid {entry!r}: the values must be a list", ExitCode.invalid)
        grid[name.strip()] = parsed
    return grid


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()  # a bare word: relu, adam...


def _print_sweep(sweep: SweepPublic) -> None:
    counts = ", ".join(f"{count} {name}" for name, count in sweep.counts.items() if count)
    table = titled_table(
        f"sweep {sweep.id}: {counts}",
        ("#", "job", "params", "status", "epoch", "val acc", "test acc", "model"),
        no_wrap=("job", "model"),
    )
    for rank, job in enumerate(sweep.jobs, start=1):
        table.add_row(
            str(rank),
            job.id,
            json.dumps(job.params),
            job.status.value,
            f"{job.progress.epoch}/{job.progress.epochs}",
            _fmt(job.val_acc),
            _fmt(job.test_acc),
            job.model_id or "-",
        )
    stdout.print(table)


@sweep_app.command("submit", epilog=EXIT_CODES)
@with_spec_flags
def sweep_submit(
    grid: Annotated[
        list[str],
        typer.Option("--grid", help="FIELD=VALUES, repeated: lr=0.1,0.5 or 'hidden_layers=[[256],[1024]]'."),
    ],
    preset: PresetOption = None,
    spec_file: SpecFileOption = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until every job has ended (exit 1 if one failed).")
    ] = False,
    timeout: TimeoutOption = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="Retry-safe submission.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
    **spec_flags: Any,
) -> None:
    """Queue a grid search: one job per combination of the --grid values, on top of the spec flags."""
    base = spec_from_flags(spec_file, spec_flags)
    with connected(url, api_key) as client:
        sweep = client.submit_sweep(_parse_grid(grid), base, preset=preset, idempotency_key=idempotency_key)
        if wait:
            sweep = client.wait_sweep(
                sweep.id,
                timeout=timeout,
                on_change=lambda s: stderr.print(
                    f"sweep {s.id}: " + ", ".join(f"{c} {n}" for n, c in s.counts.items() if c), highlight=False
                ),
            )
    if as_json:
        _print_json(sweep)
    elif wait:
        _print_sweep(sweep)
    else:
        stdout.print(f"queued sweep {sweep.id}: {len(sweep.jobs)} jobs")
    if wait and any(job.status is not JobStatus.succeeded for job in sweep.jobs):
        raise typer.Exit(int(ExitCode.job_not_succeeded))


@sweep_app.command("status", epilog=EXIT_CODES)
def sweep_status(
    sweep_id: Annotated[str, typer.Argument(help="The sweep's id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A sweep's jobs, best first."""
    with connected(url, api_key) as client:
        sweep = client.get_sweep(sweep_id)
    if as_json:
        _print_json(sweep)
    else:
        _print_sweep(sweep)


@sweep_app.command("list", epilog=EXIT_CODES)
def sweep_list(
    limit: Annotated[int, typer.Option(min=1, max=100, help="Page size.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Sweeps to skip.")] = 0,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List sweeps, newest first."""
    with connected(url, api_key) as client:
        page = client.list_sweeps(limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    table = titled_table(
        f"{page.count} sweeps", ("id", "created", "grid", "jobs", "best test acc"), no_wrap=("id", "created")
    )
    for sweep in page.data:
        accuracies = [job.test_acc for job in sweep.jobs if job.test_acc is not None]
        counts = ", ".join(f"{count} {name}" for name, count in sweep.counts.items() if count)
        table.add_row(
            sweep.id,
            _when(sweep.created_at),
            json.dumps(sweep.grid),
            counts,
            _fmt(max(accuracies) if accuracies else None),
        )
    stdout.print(table)


@sweep_app.command("cancel", epilog=EXIT_CODES)
def sweep_cancel(
    sweep_id: Annotated[str, typer.Argument(help="The sweep's id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel every job of the sweep that has not ended."""
    with connected(url, api_key) as client:
        sweep = client.cancel_sweep(sweep_id)
    if as_json:
        _print_json(sweep)
    else:
        stdout.print(f"sweep {sweep.id}: " + ", ".join(f"{c} {n}" for n, c in sweep.counts.items() if c))


def register(app: typer.Typer) -> None:
    """Adds the HTTP commands to the ``fmnist`` command."""
    for command in (submit, jobs, status, wait, cancel, metrics, predict, models):
        app.command(command.__name__, epilog=EXIT_CODES)(command)
    app.add_typer(alias_app, name="alias")
    app.add_typer(sweep_app, name="sweep")
