"""The ``fmnist`` commands that talk to a running server over HTTP: submit, jobs, wait, predict, models, sweeps,
studies...

Each takes ``--url`` and ``--api-key`` (or FMNIST_URL and FMNIST_API_KEY) and ``--json`` for scripts; tables
otherwise. Exit codes are the ``ExitCode`` values, the same for every command.

Every command is a body built by ``remote_command``: the body takes an open ``Client`` and its own options,
and returns what the command shows; the decorator adds the connection options and ``--json``, turns the
client's errors into exit codes (in ``connected``, the one place that does), and prints the answer.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

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
    AliasPublic,
    EpochMetricsPublic,
    JobMetricsPublic,
    JobPublic,
    JobsPublic,
    ModelCardPublic,
    ModelsPublic,
    PredictionFailedPublic,
    PredictionPublic,
    PredictPublic,
    SplitEvaluationPublic,
    StudiesPublic,
    StudyPublic,
    SweepPublic,
    SweepsPublic,
    image_location,
)


class ExitCode(IntEnum):
    ok = 0
    # wait, submit --wait: the job (or a sweep's job) ended failed or cancelled; study submit --wait: the study was
    # cancelled, or completed without a succeeded trial
    job_not_succeeded = 1
    invalid = 2  # usage, or a request the server refused (4xx other than those below)
    not_found = 3
    auth = 4  # 401 or 403
    unreachable = 5  # no answer, or a 5xx
    timeout = 6  # --timeout passed before the job ended


EXIT_CODES = (
    "Exit codes: 0 ok; 1 the job (or a job of the sweep) ended failed or cancelled, or the study was cancelled "
    "or completed without a succeeded trial; 2 usage error, "
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
WaitJobOption = Annotated[
    bool, typer.Option("--wait", help="Follow the job until it ends (exit 1 unless it succeeds).")
]
WaitSweepOption = Annotated[bool, typer.Option("--wait", help="Wait until every job has ended (exit 1 if one failed).")]
WaitStudyOption = Annotated[
    bool,
    typer.Option("--wait", help="Wait until the study ends (exit 1 if it was cancelled or no trial succeeded)."),
]
JobIdArgument = Annotated[str, typer.Argument(help="The job's id.")]
SweepIdArgument = Annotated[str, typer.Argument(help="The sweep's id.")]
StudyIdArgument = Annotated[str, typer.Argument(help="The study's id.")]


class _Trimmed:
    """A renderable whose lines end at their last character."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in console.render_lines(self.renderable, options, pad=False):
            while line and not line[-1].control and not line[-1].text.rstrip():
                line.pop()
            if line and not line[-1].control:
                line[-1] = Segment(line[-1].text.rstrip(), line[-1].style)
            yield from line
            yield Segment.line()


class TrimmedConsole(Console):
    """A console that ends each line at its last character: rich pads a table's cells and title with spaces to
    the table's width, which a terminal hides but a file, a diff or a copied line keeps."""

    def print(self, *objects: Any, **options: Any) -> None:
        """``Console.print``, each renderable but text trimmed of the spaces that end its lines."""
        super().print(*(item if isinstance(item, str) else _Trimmed(item) for item in objects), **options)


stdout = TrimmedConsole(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, soft_wrap=True)  # messages stay one line for scripts that read them

# rich_markup_mode=None: click's plain help, as for the top-level command (service/cli/server.py says why).
alias_app = typer.Typer(
    help="Model aliases: set, list, rm (`production`, ...).", no_args_is_help=True, rich_markup_mode=None
)
sweep_app = typer.Typer(
    help="Sweeps: grids of specs submitted, ranked and cancelled together.", no_args_is_help=True, rich_markup_mode=None
)
study_app = typer.Typer(
    help="Studies: adaptive searches (Optuna) that suggest trials and stop the hopeless ones.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


# -- the scaffold: connection options, errors as exit codes, JSON or a table ---------------------------


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


def _error_line(message: str) -> None:
    stderr.print(f"error: {message}", markup=False, highlight=False)


def _fail(message: str, code: ExitCode) -> typer.Exit:
    _error_line(message)
    return typer.Exit(int(code))


@dataclass(frozen=True)
class Shown:
    """What a command shows when its answer alone does not say: ``value`` under --json, else ``table()``;
    then an ``error:`` line on stderr for each of ``errors``, and ``exit_code``."""

    value: Any
    table: Callable[[], object]
    errors: Sequence[str] = ()
    exit_code: ExitCode = ExitCode.ok


@dataclass(frozen=True)
class Paging:
    """--limit and --offset, for a command that lists one page; its body takes ``limit`` and ``offset``."""

    noun: str  # --offset's help: "Jobs to skip."
    size: int  # --limit's default
    most: int  # --limit's maximum

    def parameters(self) -> dict[str, inspect.Parameter]:
        limit = Annotated[int, typer.Option(min=1, max=self.most, help="Page size.")]
        offset = Annotated[int, typer.Option(min=0, help=f"{self.noun} to skip.")]
        return {
            "limit": inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, default=self.size, annotation=limit),
            "offset": inspect.Parameter("offset", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=offset),
        }


_CONNECTION = [
    inspect.Parameter("url", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_URL, annotation=UrlOption),
    inspect.Parameter("api_key", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ApiKeyOption),
]
_JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOption)


def _set_parameters(command: Callable[..., Any], parameters: list[inspect.Parameter]) -> None:
    """Gives ``command`` these parameters where typer reads them: its signature and its annotations."""
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}


def remote_command(
    table: Callable[[Any], object] | None = None, *, json_option: bool = True, paging: Paging | None = None
) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Makes ``body(client, **options)`` a command: adds --url, --api-key and (with ``json_option``) --json
    after the body's own options, opens the client, and shows what the body returns: as JSON under --json
    (a model, or a list of them), else through ``table``. A body that decides more returns a ``Shown``.
    With ``paging``, the body's ``limit`` and ``offset`` become --limit and --offset."""

    def decorate(body: Callable[..., Any]) -> Callable[..., None]:
        _client, *own = inspect.signature(body, eval_str=True).parameters.values()
        declared = paging.parameters() if paging else {}
        assert declared.keys() <= {p.name for p in own}, f"{body.__name__} takes no {', '.join(declared)}"
        own = [declared.get(p.name, p) for p in own]
        fixed = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
        rest = [p for p in own if p.kind is inspect.Parameter.VAR_KEYWORD]  # **spec_flags, for with_spec_flags

        @functools.wraps(body)
        def command(*, url: str, api_key: str | None, as_json: bool = False, **options: Any) -> None:
            with connected(url, api_key) as client:
                shown = body(client, **options)
                if not isinstance(shown, Shown):
                    assert table is not None, f"{body.__name__} returns a Shown, having no table"
                    shown = Shown(shown, functools.partial(table, shown))
                if as_json:
                    _print_json(shown.value)
                else:
                    shown.table()
            for message in shown.errors:
                _error_line(message)
            if shown.exit_code is not ExitCode.ok:
                raise typer.Exit(int(shown.exit_code))

        _set_parameters(command, [*fixed, *_CONNECTION, *([_JSON] if json_option else []), *rest])
        return command

    return decorate


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(value), indent=2) + "\n")


def _outcome(*statuses: JobStatus) -> ExitCode:
    """1 unless every job succeeded."""
    return ExitCode.ok if all(status is JobStatus.succeeded for status in statuses) else ExitCode.job_not_succeeded


# -- text --------------------------------------------------------------------------------------------------


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 epoch`, `3 epochs`: a count with its noun in the number it takes (``plural``: when not noun + s)."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def listing_title(noun: str, plural: str, *, offset: int, shown: int, count: int | None) -> str:
    """How every listing says what it shows, by the place of its rows among all: `jobs 1-4 of 4`, `job 1 of 1`,
    `no jobs`, `no jobs past 20 of 4`; without ``count`` (not asked for), no ` of N`."""
    of = "" if count is None else f" of {count}"
    if shown == 0:
        return f"no {plural}" if offset == 0 else f"no {plural} past {offset}{of}"
    if shown == 1:
        return f"{noun} {offset + 1}{of}"
    return f"{plural} {offset + 1}-{offset + shown}{of}"


def print_listing(table: Table) -> None:
    """A listing's table; with no row, its title alone (`no jobs`), not an empty frame of headers."""
    stdout.print(table if table.row_count else Text(str(table.title)))


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


def _state(job: JobPublic) -> str:
    """`running`, or `running (cancel requested)`."""
    return job.status.value + (" (cancel requested)" if job.cancel_requested else "")


def _counts(sweep: SweepPublic) -> str:
    """`3 succeeded, 1 running`: the states the sweep's jobs are in."""
    return ", ".join(f"{count} {name}" for name, count in sweep.counts.items() if count)


def _sweep_line(sweep: SweepPublic) -> str:
    return f"sweep {sweep.id}: {_counts(sweep)}"


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
    return _with_flags(command, SPEC_PARAMETERS)


def with_base_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``with_spec_flags`` but for --seed, which a study's command takes for itself: the study's seed, from which
    each trial's training seed derives (a --spec file may still fix one for every trial)."""
    return _with_flags(command, [p for p in SPEC_PARAMETERS if p.name != "seed"])


def _with_flags(command: Callable[..., None], flags: list[inspect.Parameter]) -> Callable[..., None]:
    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    _set_parameters(command, [*fixed, *flags])
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


def follow(client: Client, job_id: str, timeout: float | None) -> Shown:
    """Waits for the job with a progress report; shows the job it ended as, and exits 1 unless it succeeded."""
    with ProgressReport(job_id, live=stderr.is_terminal) as report:
        job = client.wait(job_id, on_epoch=report.epoch, on_status=report.status, timeout=timeout)
    return Shown(job, functools.partial(_print_job, job, client), exit_code=_outcome(job.status))


# -- jobs -----------------------------------------------------------------------------------------------


def _print_queued_job(job: JobPublic) -> None:
    stdout.print(f"queued job {job.id}: {_summary(job.spec)}, {counted(job.spec.epochs, 'epoch')}, seed {job.seed}")


@with_spec_flags
@remote_command(_print_queued_job)
def submit(
    client: Client,
    preset: PresetOption = None,
    spec_file: SpecFileOption = None,
    wait: WaitJobOption = False,
    timeout: TimeoutOption = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Resending with the same key cannot queue twice.")
    ] = None,
    **spec_flags: Any,
) -> JobPublic | Shown:
    """Queue a training job: spec flags, a --preset, or a --spec file (flags override both)."""
    spec = spec_from_flags(spec_file, spec_flags)
    job = client.submit(spec, preset=preset, idempotency_key=idempotency_key)
    return follow(client, job.id, timeout) if wait else job


def _print_jobs(page: JobsPublic, continued: bool = False) -> None:
    """A page of jobs; a page that a cursor continued is not numbered (its place in the listing is not known)."""
    if continued:
        shown = len(page.data)
        title = f"{shown or 'no'} {'job' if shown == 1 else 'jobs'} after the cursor"
        title += "" if page.count is None else f" ({page.count} in all)"
    else:
        title = listing_title("job", "jobs", offset=page.offset, shown=len(page.data), count=page.count)
    table = titled_table(
        title,
        ("id", "status", "epoch", "spec", "epochs", "test acc", "created", "model"),
        no_wrap=("id", "model", "created"),
    )
    for job in page.data:
        table.add_row(
            job.id,
            job.status.value,
            f"{job.progress.epoch}/{job.progress.epochs}",
            _summary(job.spec),
            str(job.spec.epochs),
            _fmt(job.test_acc),
            _when(job.created_at),
            job.model_id or "-",
        )
    print_listing(table)
    if page.next_cursor is not None:
        stdout.print(f"more: --cursor {page.next_cursor}", markup=False, highlight=False)


SORTS = ("created_at", "test_acc", "val_acc", "train_seconds")


def _spec_conditions(entries: list[str]) -> dict[str, Any]:
    """--where FIELD=VALUE entries as the client's ``where``: a list field's value as a list, others as text."""
    conditions: dict[str, Any] = {}
    for entry in entries:
        name, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or name not in SPEC_FIELDS:
            hint = f"no spec field {name!r}; the fields: {', '.join(SPEC_FIELDS)}" if sep else "write FIELD=VALUE"
            raise _fail(f"--where {entry!r}: {hint}", ExitCode.invalid)
        if get_origin(_unwrap_optional(SPEC_FIELDS[name].annotation)) is list:
            try:
                conditions[name] = _parse_list(value)
            except ValueError as exc:
                raise _fail(f"--where {entry!r}: use comma-separated numbers, e.g. 256,128", ExitCode.invalid) from exc
        else:
            conditions[name] = value
    return conditions


@remote_command(paging=Paging("Jobs", size=20, most=500))
def jobs(
    client: Client,
    status: Annotated[JobStatus | None, typer.Option("--status", help="Only jobs in this state.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", help="KEY:VALUE (the tag has this value) or KEY (the job has the tag); repeat: all hold."
        ),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where", help="FIELD=VALUE on the spec: optimizer=adam, hidden_layers=256,128; repeat: all hold."
        ),
    ] = None,
    sort: Annotated[
        str,
        typer.Option("--sort", help=f"{', '.join(SORTS)}; '-' first for descending (jobs without a value last)."),
    ] = "-created_at",
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue a listing (same filters and sort) where a page ended.")
    ] = None,
    *,
    limit: int,
    offset: int,
) -> Shown:
    """List jobs, newest first, or sorted by accuracy or training time; filtered by status, tags and spec fields."""
    page = client.list_jobs(
        status, limit=limit, offset=offset, tags=tag, where=_spec_conditions(where or []), sort=sort, cursor=cursor
    )
    return Shown(page, functools.partial(_print_jobs, page, continued=cursor is not None))


def _labels(job: JobPublic) -> str:
    return " ".join(f"{key}={value}" for key, value in job.tags.items()) or "-"


def _print_labels(job: JobPublic) -> None:
    stdout.print(f"job {job.id}: tags {_labels(job)}", markup=False, highlight=False)
    stdout.print(f"note: {job.note if job.note is not None else '-'}", markup=False, highlight=False)


@remote_command(_print_labels)
def tag(
    client: Client,
    job_id: JobIdArgument,
    tags: Annotated[
        list[str] | None, typer.Argument(metavar="[KEY=VALUE]...", help="Tags to set (other tags stay).")
    ] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="A tag to remove; repeat for more.")] = None,
    note: Annotated[str | None, typer.Option("--note", help="Replace the job's note with this text.")] = None,
    clear_note: Annotated[bool, typer.Option("--clear-note", help="Remove the job's note.")] = False,
) -> JobPublic:
    """Label a job (any status): set tags, remove some, replace or clear its note; alone, show its labels."""
    changes: dict[str, str | None] = {}
    for entry in tags or []:
        key, sep, value = entry.partition("=")
        if not sep:
            raise _fail(
                f"{entry!r}: write KEY=VALUE (KEY=, for an empty value; --remove KEY to remove)", ExitCode.invalid
            )
        changes[key] = value
    for key in remove or []:
        if key in changes:
            raise _fail(f"--remove {key}: the tag is also set here; set it or remove it", ExitCode.invalid)
        changes[key] = None
    if note is not None and clear_note:
        raise _fail("--note and --clear-note: give one", ExitCode.invalid)
    if not changes and note is None and not clear_note:
        return client.get_job(job_id)
    labels: dict[str, Any] = {"tags": changes} if changes else {}
    if note is not None or clear_note:
        labels["note"] = note  # None with --clear-note
    return client.update_job(job_id, **labels)


def _print_job(job: JobPublic, client: Client | None = None) -> None:
    """The job's fields; with a client, a succeeded job's last epoch too."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("id", job.id),
        ("status", _state(job)),
        ("progress", f"epoch {job.progress.epoch} of {job.progress.epochs}"),
        ("spec", f"{_summary(job.spec)}, batch {job.spec.batch_size}, {counted(job.spec.epochs, 'epoch')}"),
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
    if job.tags:
        rows.append(("tags", _labels(job)))
    if job.note:
        rows.append(("note", job.note))
    if job.test_acc is not None:
        accuracy = f"test acc {job.test_acc:.4f}" + ("" if job.val_acc is None else f", val acc {job.val_acc:.4f}")
        rows.append(("accuracy", accuracy))
    if client is not None and job.status is JobStatus.succeeded:
        epochs = client.get_metrics(job.id).epochs
        if epochs:
            last = epochs[-1]
            rows.append(("last epoch", f"test acc {last.test_acc:.4f}, train acc {last.train_acc:.4f}"))
    for key, value in rows:
        table.add_row(key, value)
    stdout.print(table)


@remote_command(_print_job)
def status(client: Client, job_id: JobIdArgument) -> JobPublic:
    """Show a job: status, spec, progress, outcome."""
    return client.get_job(job_id)


@remote_command()
def wait(client: Client, job_id: JobIdArgument, timeout: TimeoutOption = None) -> Shown:
    """Follow a job live until it ends: epoch, loss, accuracy, ETA. Exit 1 unless it succeeded."""
    return follow(client, job_id, timeout)


@remote_command(lambda job: stdout.print(f"job {job.id}: {_state(job)}"))
def cancel(client: Client, job_id: JobIdArgument) -> JobPublic:
    """Cancel a queued or running job (a running one stops at its next batch)."""
    return client.cancel_job(job_id)


def _print_metrics(result: JobMetricsPublic) -> None:
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


@remote_command(_print_metrics)
def metrics(client: Client, job_id: JobIdArgument) -> JobMetricsPublic:
    """A job's per-epoch metrics (so far)."""
    return client.get_metrics(job_id)


# -- predictions and models ------------------------------------------------------------------------------


def _print_predictions(result: PredictPublic, images: list[Path], top_k: int) -> None:
    """The images the server could classify, if any (the others have their error lines)."""
    predicted = [
        (path, item)
        for path, item in zip(images, result.predictions, strict=True)
        if isinstance(item, PredictionPublic)
    ]
    if not predicted:
        return
    table = titled_table(f"model {result.model_id}", ("image", "class", "probability", f"top {top_k}"), overflow="fold")
    for path, item in predicted:
        ranked = ", ".join(f"{entry.class_name} {entry.probability:.2f}" for entry in item.top_k)
        table.add_row(str(path), item.class_name, f"{item.probability:.4f}", ranked)
    stdout.print(table)


@remote_command()
def predict(
    client: Client,
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG...).", exists=True, dir_okay=False)],
    model: Annotated[str | None, typer.Option("--model", help="Model id or alias; default: the server's.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=10, help="Classes to list per image.")] = 3,
) -> Shown:
    """Classify images with a trained model: a table of the predictions, and one error line per image the
    server could not use (then exit 2, or 5 if the server failed on one)."""
    result = client.predict(list(images), model=model, top_k=top_k)
    body = result.model_dump(mode="json")
    for path, entry in zip(images, body["predictions"], strict=True):
        entry["image"] = str(path)
    failures = [item for item in result.predictions if isinstance(item, PredictionFailedPublic)]
    errors = [
        f"{images[item.index]}: {item.error.status} {_phrase(item.error.status)}: {_reason(item)}" for item in failures
    ]
    # As if each bad image had been sent alone: the server refused it (2), or failed on it (5).
    code = ExitCode.ok if not failures else ExitCode.invalid
    if any(item.error.status >= 500 for item in failures):
        code = ExitCode.unreachable
    return Shown(body, functools.partial(_print_predictions, result, images, top_k), errors, code)


def _print_models(page: ModelsPublic, offset: int) -> None:
    table = titled_table(
        listing_title("model", "models", offset=offset, shown=len(page.models), count=page.count),
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
    print_listing(table)


@remote_command(paging=Paging("Models", size=50, most=500))
def models(client: Client, *, limit: int, offset: int) -> Shown:
    """List trained models, newest first, with their aliases."""
    page = client.list_models(limit=limit, offset=offset)
    return Shown(page, functools.partial(_print_models, page, offset))


def _print_evaluation(model_id: str, shown: SplitEvaluationPublic) -> None:
    stdout.print(
        f"model {model_id}, {shown.split} split ({counted(shown.samples, 'image')}): "
        f"accuracy {shown.accuracy:.4f}, expected calibration error {shown.ece:.4f}"
    )
    table = titled_table("per class", ("class", "precision", "recall", "f1", "support"), no_wrap=("class",))
    for scores in shown.per_class:
        table.add_row(
            f"{scores.class_id} {scores.class_name}",
            _fmt(scores.precision),
            _fmt(scores.recall),
            _fmt(scores.f1),
            str(scores.support),
        )
    stdout.print(table)
    pairs = titled_table("most confused", ("true", "predicted as", "count", "share of true"), no_wrap=("true",))
    for pair in shown.confused_pairs[:5]:
        pairs.add_row(pair.true_class_name, pair.predicted_class_name, str(pair.count), _fmt(pair.share, 3))
    stdout.print(pairs)


class EvaluationSplit(StrEnum):
    test = "test"
    validation = "validation"


@remote_command()
def evaluate(
    client: Client,
    model: Annotated[str, typer.Argument(help="A model id or alias.")],
    split: Annotated[EvaluationSplit, typer.Option(help="Which split's scores to show (--json has both).")] = (
        EvaluationSplit.test
    ),
) -> Shown:
    """A model's evaluation: accuracy, calibration error, per-class precision, recall and F1, and the classes it
    confuses most."""
    evaluation = client.get_model_evaluation(model)
    shown = evaluation if split is EvaluationSplit.test else evaluation.validation
    if shown is None:
        raise _fail(f"model {evaluation.model_id} has no validation split: its job held none out", ExitCode.invalid)
    return Shown(evaluation, functools.partial(_print_evaluation, evaluation.model_id, shown))


def _details(title: str, rows: Sequence[tuple[str, object]]) -> Table:
    """A titled table of names and values; values are text as the server sent it, never rich markup."""
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, Text("-" if value is None or value == "" else str(value)))
    return table


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(seconds, 60)
    return f"{seconds:.1f} s" if minutes < 1 else f"{int(minutes)} min {rest:.0f} s"


def _kept_epoch_line(card: ModelCardPublic) -> str:
    kept = card.kept_epoch
    trained = f"{kept.epochs_trained} of {counted(kept.epochs_planned, 'planned epoch')} trained"
    epoch = "epoch ?" if kept.epoch is None else f"epoch {kept.epoch}"
    if kept.reason == "validation":
        return f"{epoch}: the best validation accuracy ({trained})"
    return f"{epoch}: the last trained, no validation split to choose by ({trained})"


def _print_card(card: ModelCardPublic) -> None:
    aliases = f" ({', '.join(card.aliases)})" if card.aliases else ""
    stdout.print(Text(f"model {card.model_id}{aliases}: {card.summary}", style="bold"))
    kept = card.kept_epoch
    stdout.print()
    stdout.print(
        _details(
            "model",
            [
                ("parameters", f"{card.parameters:,}"),
                ("checkpoint", f"{card.size_bytes:,} bytes, sha256 {card.sha256}"),
                ("created", _when(card.created_at)),
                ("kept", _kept_epoch_line(card)),
                ("test acc", _fmt(kept.test_acc)),
                ("val acc", _fmt(kept.val_acc)),
            ],
        )
    )
    spec = card.spec.model_dump(mode="json")  # every field the spec has, in its order
    stdout.print()
    stdout.print(_details("spec", [(name, json.dumps(value)) for name, value in spec.items()]))
    lineage = card.lineage
    trial = f" (trial {lineage.trial_number})" if lineage.trial_number is not None else ""
    resumed = lineage.resumed_from_epoch
    stdout.print()
    stdout.print(
        _details(
            "lineage",
            [
                ("job", lineage.job_id),
                ("preset", lineage.preset),
                ("sweep", lineage.sweep_id),
                ("study", f"{lineage.study_id}{trial}" if lineage.study_id else None),
                ("attempts", f"{lineage.attempts} of {lineage.max_attempts}"),
                (
                    "last attempt",
                    None if resumed is None else "from scratch" if resumed == 0 else f"resumed after epoch {resumed}",
                ),
                ("tags", ", ".join(f"{key}={value}" for key, value in (lineage.tags or {}).items())),
                ("note", lineage.note),
                ("submitted", _when(lineage.submitted_at)),
                ("started", _when(lineage.started_at)),
                ("finished", _when(lineage.finished_at)),
            ],
        )
    )
    provenance = card.provenance
    cuda_graphs = None if provenance.cuda_graphs is None else "yes" if provenance.cuda_graphs else "no"
    stdout.print()
    stdout.print(
        _details(
            "provenance",
            [
                ("seed", provenance.seed),
                ("code", provenance.code_version),
                ("torch", provenance.torch_version),
                ("device", provenance.device),
                ("cuda graphs", cuda_graphs),
                ("pack size", provenance.pack_size),
                ("training time", _duration(provenance.train_seconds)),
                ("train samples", None if provenance.train_samples is None else f"{provenance.train_samples:,}"),
                *((f"data {name}", sha) for name, sha in provenance.data_sha256.items()),
            ],
        )
    )
    stdout.print()
    _print_evaluation(card.model_id, card.evaluation)
    if card.evaluation.validation is not None:
        validation = card.evaluation.validation
        stdout.print(
            f"validation split ({counted(validation.samples, 'image')}): accuracy {validation.accuracy:.4f}, "
            f"expected calibration error {validation.ece:.4f}"
        )
    contract = card.input_contract
    stdout.print()
    stdout.print(
        _details(
            "input",
            [
                ("image", f"{contract.height}x{contract.width} {contract.colour}, {contract.polarity}"),
                *((f"upload step {number}", step) for number, step in enumerate(contract.upload_steps, start=1)),
                ("formats", ", ".join(contract.formats)),
                ("limits", f"{contract.max_upload_bytes:,} bytes, {contract.max_image_pixels:,} pixels per image"),
                ("pixels", contract.pixels),
            ],
        )
    )
    limits = card.known_limits
    table = titled_table(
        f"known limits: accuracy on uploads, from {limits.source}",
        ("upload", "accuracy", "vs the 28x28 PNG", "agrees with the tensor"),
        no_wrap=("upload",),
    )
    for row in limits.uploads:
        change = "-" if row.change is None else f"{row.change:+.4f}"
        table.add_row(Text(row.upload), f"{row.accuracy:.4f}", change, f"{row.agreement:.4f}")
    table.caption = limits.setup
    table.caption_justify = "left"
    stdout.print()
    stdout.print(table)
    for note in limits.notes:
        stdout.print(Text(f"- {note}"))


@remote_command(_print_card)
def card(client: Client, model: Annotated[str, typer.Argument(help="A model id or alias.")]) -> ModelCardPublic:
    """A model's card: spec, kept epoch and why, evaluation, lineage, provenance, input contract and known
    limits on real uploads."""
    return client.get_model_card(model)


@alias_app.command("set", epilog=EXIT_CODES)
@remote_command(lambda alias: stdout.print(f"{alias.name} -> {alias.model_id}"))
def alias_set(
    client: Client,
    name: Annotated[str, typer.Argument(help="The alias, e.g. production.")],
    model: Annotated[str, typer.Argument(help="A model id, or another alias to copy.")],
) -> AliasPublic:
    """Point an alias at a model (needs an admin key when the server has keys)."""
    return client.set_alias(name, model)


def _print_aliases(aliases: list[AliasPublic]) -> None:
    table = titled_table(
        listing_title("alias", "aliases", offset=0, shown=len(aliases), count=len(aliases)),
        ("alias", "model", "updated"),
        no_wrap=("alias", "model", "updated"),
    )
    for alias in aliases:
        table.add_row(alias.name, alias.model_id, _when(alias.updated_at))
    print_listing(table)


@alias_app.command("list", epilog=EXIT_CODES)
@remote_command(_print_aliases)
def alias_list(client: Client) -> list[AliasPublic]:
    """List aliases and the models they point at."""
    return client.list_aliases()


@alias_app.command("rm", epilog=EXIT_CODES)
@remote_command(lambda name: stdout.print(f"removed alias {name}"), json_option=False)
def alias_rm(client: Client, name: Annotated[str, typer.Argument(help="The alias.")]) -> str:
    """Remove an alias (the model stays)."""
    client.delete_alias(name)
    return name


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
    table = titled_table(
        _sweep_line(sweep),
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
@remote_command(lambda sweep: stdout.print(f"queued sweep {sweep.id}: {counted(len(sweep.jobs), 'job')}"))
def sweep_submit(
    client: Client,
    grid: Annotated[
        list[str],
        typer.Option("--grid", help="FIELD=VALUES, repeated: lr=0.1,0.5 or 'hidden_layers=[[256],[1024]]'."),
    ],
    preset: PresetOption = None,
    spec_file: SpecFileOption = None,
    wait: WaitSweepOption = False,
    timeout: TimeoutOption = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="Retry-safe submission.")] = None,
    **spec_flags: Any,
) -> SweepPublic | Shown:
    """Queue a grid search: one job per combination of the --grid values, on top of the spec flags."""
    base = spec_from_flags(spec_file, spec_flags)
    sweep = client.submit_sweep(_parse_grid(grid), base, preset=preset, idempotency_key=idempotency_key)
    if not wait:
        return sweep
    sweep = client.wait_sweep(
        sweep.id, timeout=timeout, on_change=lambda s: stderr.print(_sweep_line(s), highlight=False)
    )
    return Shown(sweep, functools.partial(_print_sweep, sweep), exit_code=_outcome(*(job.status for job in sweep.jobs)))


@sweep_app.command("status", epilog=EXIT_CODES)
@remote_command(_print_sweep)
def sweep_status(client: Client, sweep_id: SweepIdArgument) -> SweepPublic:
    """A sweep's jobs, best first."""
    return client.get_sweep(sweep_id)


def _print_sweeps(page: SweepsPublic, offset: int) -> None:
    table = titled_table(
        listing_title("sweep", "sweeps", offset=offset, shown=len(page.data), count=page.count),
        ("id", "created", "grid", "jobs", "best test acc"),
        no_wrap=("id", "created"),
    )
    for sweep in page.data:
        accuracies = [job.test_acc for job in sweep.jobs if job.test_acc is not None]
        table.add_row(
            sweep.id,
            _when(sweep.created_at),
            json.dumps(sweep.grid),
            _counts(sweep),
            _fmt(max(accuracies) if accuracies else None),
        )
    print_listing(table)


@sweep_app.command("list", epilog=EXIT_CODES)
@remote_command(paging=Paging("Sweeps", size=20, most=100))
def sweep_list(client: Client, *, limit: int, offset: int) -> Shown:
    """List sweeps, newest first."""
    page = client.list_sweeps(limit=limit, offset=offset)
    return Shown(page, functools.partial(_print_sweeps, page, offset))


@sweep_app.command("cancel", epilog=EXIT_CODES)
@remote_command(lambda sweep: stdout.print(_sweep_line(sweep)))
def sweep_cancel(client: Client, sweep_id: SweepIdArgument) -> SweepPublic:
    """Cancel every job of the sweep that has not ended."""
    return client.cancel_sweep(sweep_id)


# -- studies -----------------------------------------------------------------------------------------------


class StudyFigure(StrEnum):
    history = "history"
    importances = "importances"
    parallel = "parallel"


def _json_object(what: str, text: str, example: str) -> dict[str, Any]:
    """``text`` as a JSON object: inline, or ``@FILE`` for a file's; a usage error (exit 2) otherwise."""
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text()
        except OSError as exc:
            raise _fail(f"{what} {text}: cannot read {text[1:]!r}: {exc.strerror or exc}", ExitCode.invalid) from exc
    quoted = repr(text if len(text) <= 80 else text[:77] + "...")
    try:
        parsed = json.loads(source)
    except ValueError as exc:
        hint = f" (to read the file, write @{text})" if not text.startswith("@") and _is_file(text) else ""
        raise _fail(f"{what} {quoted}: not valid JSON: {exc}{hint}; e.g. {example}", ExitCode.invalid) from exc
    if not isinstance(parsed, dict):
        raise _fail(f"{what} {quoted}: expected a JSON object, e.g. {example}", ExitCode.invalid)
    return parsed


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: inline text, not a path
        return False


def _named_or_object(flag: str, text: str) -> str | dict[str, Any]:
    """A --sampler or --pruner: a name, or a JSON object with ``type`` and options."""
    text = text.strip()
    if text.startswith("{"):
        return _json_object(flag, text, f'\'{{"type": "{"median" if flag == "--pruner" else "tpe"}", ...}}\'')
    return text


def _param_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _params(params: dict[str, Any]) -> str:
    """`lr=0.1234 hidden_layers=[256]`: a trial's suggested values, floats to 4 significant digits."""
    return " ".join(f"{name}={_param_text(value)}" for name, value in params.items()) or "-"


def _study_counts(study: StudyPublic) -> str:
    return ", ".join(f"{count} {name}" for name, count in study.counts.items() if count)


def _study_line(study: StudyPublic) -> str:
    """`study ID: running, 5 of 20 trials (3 succeeded, 1 pruned, 1 running)`."""
    counts = _study_counts(study)
    return f"study {study.id}: {study.status}, {len(study.trials)} of {counted(study.n_trials, 'trial')}" + (
        f" ({counts})" if counts else ""
    )


def _best_line(study: StudyPublic) -> str:
    best = study.best
    if best is None:
        return "best: none yet (no trial has succeeded)"
    return (
        f"best: trial {best.number} (job {best.job_id}): val acc {best.val_acc:.4f}, test acc {_fmt(best.test_acc)}, "
        f"{_params(best.params)}, model {best.model_id or '-'}"
    )


def _print_started_study(study: StudyPublic) -> None:
    stdout.print(
        f"started study {study.id}: {counted(study.n_trials, 'trial')}, {study.sampler.get('type', '?')} sampler, "
        f"{study.pruner.get('type', '?')} pruner, {study.max_concurrent} at once, seed {study.seed}",
        markup=False,
        highlight=False,
    )


def _print_study(study: StudyPublic) -> None:
    """The trials in the order suggested, each failed trial's error, and the best trial."""
    table = titled_table(
        _study_line(study),
        ("#", "job", "status", "params", "epoch", "val acc", "test acc", "pruned at"),
        no_wrap=("job",),
    )
    for trial in study.trials:
        table.add_row(
            str(trial.number),
            trial.job_id or "-",  # a suggestion that was not a valid spec ran no job
            trial.status.value,
            _params(trial.params),
            f"{trial.progress.epoch}/{trial.progress.epochs}",
            _fmt(trial.val_acc),
            _fmt(trial.test_acc),
            "-" if trial.pruned_at_epoch is None else f"epoch {trial.pruned_at_epoch}",
        )
    stdout.print(table)
    for trial in study.trials:
        if trial.error:
            stdout.print(f"trial {trial.number} failed: {trial.error}", markup=False, highlight=False)
    stdout.print(_best_line(study), markup=False, highlight=False)


def _study_outcome(study: StudyPublic) -> ExitCode:
    """0 when the study completed with a best trial; 1 when it was cancelled, or no trial succeeded."""
    return ExitCode.ok if study.status == "completed" and study.best is not None else ExitCode.job_not_succeeded


@study_app.command(
    "submit",
    epilog=(
        'SPACE maps spec fields to a range {"low", "high", "log"?, "step"?} or {"choices": [...]}, either '
        'with "when": {field: value} to search it only then; e.g. '
        '\'{"lr": {"low": 0.01, "high": 0.5, "log": true}, "hidden_layers": {"choices": [[256], [1024]]}}\', '
        "or @space.json. With --wait: exit 0 when the study completed with a best trial, 1 when it was cancelled "
        "or no trial succeeded. " + EXIT_CODES
    ),
)
@with_base_flags
@remote_command(_print_started_study)
def study_submit(
    client: Client,
    space: Annotated[
        str, typer.Argument(metavar="SPACE", help="The search space: inline JSON, or @FILE for a JSON file.")
    ],
    preset: PresetOption = None,
    spec_file: SpecFileOption = None,
    sampler: Annotated[
        str, typer.Option("--sampler", help='tpe, random or grid; or a JSON object: \'{"type": "tpe", ...}\'.')
    ] = "tpe",
    pruner: Annotated[
        str,
        typer.Option(
            "--pruner",
            help="median, successive_halving, hyperband or none; or a JSON object: "
            '\'{"type": "median", "n_warmup_steps": 2}\'.',
        ),
    ] = "median",
    trials: Annotated[int, typer.Option("--trials", min=1, help="How many trials the study runs in all.")] = 20,
    max_concurrent: Annotated[
        int, typer.Option("--max-concurrent", min=1, help="Trials queued or running at once.")
    ] = 4,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            min=0,
            help="Seeds the sampler and each trial's training (drawn when omitted). A training seed fixed for "
            "every trial goes in a --spec file.",
            show_default=False,
        ),
    ] = None,
    wait: WaitStudyOption = False,
    timeout: TimeoutOption = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="Retry-safe submission.")] = None,
    **spec_flags: Any,
) -> StudyPublic | Shown:
    """Start a study: the sampler suggests --trials specs from SPACE on top of the spec flags (the base); the
    pruner stops trials whose validation accuracy falls behind."""
    example = '\'{"lr": {"low": 0.01, "high": 0.5, "log": true}}\' or @space.json'
    parsed_space = _json_object("SPACE", space, example)
    base = spec_from_flags(spec_file, spec_flags)
    study = client.submit_study(
        parsed_space,
        base,
        preset=preset,
        sampler=_named_or_object("--sampler", sampler),
        pruner=_named_or_object("--pruner", pruner),
        trials=trials,
        max_concurrent=max_concurrent,
        seed=seed,
        idempotency_key=idempotency_key,
    )
    if not wait:
        return study
    study = client.wait_study(
        study.id,
        timeout=timeout,
        on_change=lambda s: stderr.print(_study_line(s), markup=False, highlight=False),
    )
    return Shown(study, functools.partial(_print_study, study), exit_code=_study_outcome(study))


@remote_command(_print_study)
def study_show(client: Client, study_id: StudyIdArgument) -> StudyPublic:
    """A study's trials in the order suggested (status, params, accuracy, the epoch a pruned one stopped at),
    then its best trial."""
    return client.get_study(study_id)


study_app.command("show", epilog=EXIT_CODES)(study_show)
study_app.command("status", epilog=EXIT_CODES, hidden=True)(study_show)  # as `sweep status` is named


def _print_studies(page: StudiesPublic, offset: int) -> None:
    table = titled_table(
        listing_title("study", "studies", offset=offset, shown=len(page.data), count=page.count),
        ("id", "status", "created", "sampler", "pruner", "trials", "best val acc"),
        no_wrap=("id", "created"),
    )
    for study in page.data:
        table.add_row(
            study.id,
            study.status,
            _when(study.created_at),
            str(study.sampler.get("type", "-")),
            str(study.pruner.get("type", "-")),
            f"{len(study.trials)}/{study.n_trials}" + (f": {_study_counts(study)}" if study.counts else ""),
            _fmt(study.best.val_acc if study.best is not None else None),
        )
    print_listing(table)


@study_app.command("list", epilog=EXIT_CODES)
@remote_command(paging=Paging("Studies", size=20, most=100))
def study_list(client: Client, *, limit: int, offset: int) -> Shown:
    """List studies, newest first."""
    page = client.list_studies(limit=limit, offset=offset)
    return Shown(page, functools.partial(_print_studies, page, offset))


@study_app.command("cancel", epilog=EXIT_CODES)
@remote_command(lambda study: stdout.print(_study_line(study), markup=False, highlight=False))
def study_cancel(client: Client, study_id: StudyIdArgument) -> StudyPublic:
    """Stop a study: no more trials; its queued trials are cancelled, running ones stop at their next batch."""
    return client.cancel_study(study_id)


@study_app.command("plot", epilog=EXIT_CODES)
@remote_command(lambda path: stdout.print(f"wrote {path}", markup=False, highlight=False), json_option=False)
def study_plot(
    client: Client,
    study_id: StudyIdArgument,
    kind: Annotated[
        StudyFigure,
        typer.Option(
            "--kind",
            help="history: the objective per trial and the best so far; importances: how much each parameter "
            "mattered; parallel: the trials' parameters side by side.",
        ),
    ] = StudyFigure.history,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="The SVG file to write (default: study-ID-KIND.svg).",
            show_default=False,
        ),
    ] = None,
) -> Path:
    """Save one of a study's figures as SVG."""
    figure = client.get_study_figure(study_id, kind.value)
    target = output if output is not None else Path(f"study-{study_id}-{kind.value}.svg")
    try:
        target.write_bytes(figure)
    except OSError as exc:
        raise _fail(f"--output {target}: {exc.strerror or exc}", ExitCode.invalid) from exc
    return target


# -- deleting a job ---------------------------------------------------------------------------------------------


@remote_command(lambda job_id: stdout.print(f"deleted job {job_id}", markup=False, highlight=False), json_option=False)
def delete_job(client: Client, job_id: JobIdArgument) -> str:
    """Delete an ended job with its metrics and model (exit 2 for a queued or running job: cancel it first; or
    while an alias serves its model)."""
    client.delete_job(job_id)
    return job_id


def register(app: typer.Typer) -> None:
    """Adds the HTTP commands to the ``fmnist`` command."""
    for command in (submit, jobs, status, wait, cancel, tag, metrics, predict, models):
        app.command(command.__name__, epilog=EXIT_CODES)(command)
    app.command("eval", epilog=EXIT_CODES)(evaluate)
    app.command("card", epilog=EXIT_CODES)(card)
    app.command("delete-job", epilog=EXIT_CODES)(delete_job)
    app.add_typer(alias_app, name="alias")
    app.add_typer(sweep_app, name="sweep")
    app.add_typer(study_app, name="study")
