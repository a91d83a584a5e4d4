"""The figures of d2l's chapter 4, drawn from the service's data: training curves, comparisons of several
runs, test images with their predicted labels, and the activation functions with their gradients.

Pure functions from plain data to SVG or PNG bytes. They draw on ``matplotlib.figure.Figure`` objects,
each with its own canvas, never through pyplot, whose global figure manager is not thread-safe: the API
renders in its thread pool, several figures at once. The same data always gives the same bytes (no date in
the metadata, SVG ids derived from content), so a figure can carry an ETag and tests can compare output.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

# Both are read when a figure is saved, so they are set once for the process rather than per figure
# (matplotlib's rc_context swaps global state, which threads rendering side by side would see).
# Without a salt, SVG clip-path ids are random: two renders of the same data would differ.
matplotlib.rcParams["svg.hashsalt"] = "fmnist-service"
# Text as <text> elements rather than glyph outlines: a third of the size, and selectable in a browser.
matplotlib.rcParams["svg.fonttype"] = "none"

Format = Literal["svg", "png"]
MEDIA_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}
# Bump when a figure's drawing changes, so that ETags computed from the data change with it.
FIGURE_VERSION = 1
PNG_DPI = 120
SAMPLE_COLUMNS = 9  # d2l's predict_ch3 shows one row of this many
MISTAKE_COLOUR = "#d62728"
# d2l's Animator draws its lines with the formats ('-', 'm--', 'g-.', 'r:').
CURVE_STYLES: dict[str, tuple[str, str]] = {
    "train loss": ("C0", "-"),
    "train acc": ("m", "--"),
    "test acc": ("g", "-."),
    "val acc": ("r", ":"),
}
# How a spec field is named in a comparison's legend ("hidden 256", "lr 0.1"); the rest use their field
# name with spaces. Fields whose values say enough on their own ("relu", "adam") have no name.
FIELD_LABELS: dict[str, str] = {
    "hidden_layers": "hidden",
    "batch_size": "batch",
    "lr_schedule": "schedule",
    "early_stopping_patience": "patience",
    "val_fraction": "validation",
    "activation": "",
    "optimizer": "",
}


class EpochRow(Protocol):
    """One epoch's metrics, as the database and the API hold them."""

    @property
    def epoch(self) -> int: ...
    @property
    def train_loss(self) -> float: ...
    @property
    def train_acc(self) -> float: ...
    @property
    def test_acc(self) -> float: ...
    @property
    def val_acc(self) -> float | None: ...


@dataclass(frozen=True)
class Run:
    """One job in a comparison: its legend label, its epochs so far, and how many it will run."""

    label: str
    rows: Sequence[EpochRow]
    epochs: int


@dataclass(frozen=True)
class Sample:
    """A test image (28x28 uint8, light garment on black), its true class and the predicted one."""

    image: np.ndarray[Any, np.dtype[np.uint8]]
    true_label: str
    predicted_label: str

    @property
    def correct(self) -> bool:
        return self.true_label == self.predicted_label


def training_curves(rows: Sequence[EpochRow], *, epochs: int, title: str | None = None, fmt: Format = "svg") -> bytes:
    """A job's curves as d2l's Animator draws them: train loss, train and test accuracy (and validation
    accuracy when the job holds a split out) against the epoch, on an x axis as long as the run will be."""
    figure = Figure(figsize=(4.5, 3.2), layout="constrained")
    axes = figure.add_subplot()
    x = [row.epoch for row in rows]
    series: list[tuple[str, list[float]]] = [
        ("train loss", [row.train_loss for row in rows]),
        ("train acc", [row.train_acc for row in rows]),
        ("test acc", [row.test_acc for row in rows]),
    ]
    if any(row.val_acc is not None for row in rows):
        series.append(("val acc", [math.nan if row.val_acc is None else row.val_acc for row in rows]))
    for label, values in series:
        colour, style = CURVE_STYLES[label]
        # A single point draws no line: mark it until there are two.
        (line,) = axes.plot(x, values, style, color=colour, label=label, marker="o" if len(x) == 1 else None)
        line.set_gid(f"curve-{label.replace(' ', '-')}")
    if not rows:
        axes.text(0.5, 0.5, "no epochs yet", transform=axes.transAxes, ha="center", va="center", color="0.4")
    highest = max((value for _, values in series for value in values if math.isfinite(value)), default=1.0)
    axes.set_ylim(0, max(1.0, highest * 1.05))
    _epoch_axis(axes, max(epochs, x[-1] if x else 1))
    axes.grid(True)
    # A fixed place, not "best": the loss falls from the top and the accuracies rise towards it, so the
    # middle of the right side is where the lines are not, and searching for a place costs time.
    axes.legend(loc="center right", fontsize="small").set_gid("legend")
    if title:
        axes.set_title(title, fontsize="medium")
    return _render(figure, fmt)


def comparison(runs: Sequence[Run], *, fmt: Format = "svg") -> bytes:
    """Several runs on one figure, one colour each: train loss on the left, test accuracy on the right, as
    the chapter compares hidden widths and learning rates."""
    figure = Figure(figsize=(8.0, 3.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for index, run in enumerate(runs):
        # Ten colours; past them the colours repeat with dashes.
        colour, style = f"C{index % 10}", "-" if index < 10 else "--"
        x = [row.epoch for row in run.rows]
        marker = "o" if len(x) == 1 else None
        (line,) = loss_axes.plot(
            x, [row.train_loss for row in run.rows], style, color=colour, label=run.label, marker=marker
        )
        line.set_gid(f"loss-{index}")
        (line,) = accuracy_axes.plot(x, [row.test_acc for row in run.rows], style, color=colour, marker=marker)
        line.set_gid(f"accuracy-{index}")
    longest = max((max(run.epochs, run.rows[-1].epoch if run.rows else 1) for run in runs), default=1)
    for axes, label in ((loss_axes, "train loss"), (accuracy_axes, "test accuracy")):
        _epoch_axis(axes, longest)
        axes.set_ylabel(label)
        axes.grid(True)
    loss_axes.set_ylim(bottom=0)
    if not any(run.rows for run in runs):
        for axes in (loss_axes, accuracy_axes):
            axes.text(0.5, 0.5, "no epochs yet", transform=axes.transAxes, ha="center", va="center", color="0.4")
    figure.legend(loc="outside right upper", fontsize="small").set_gid("legend")
    return _render(figure, fmt)


def distinguishing_labels(specs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    """Legend labels from what differs between the specs ("hidden 256" against "hidden 1024").

    A seed counts only when nothing else differs. Runs that nothing tells apart fall back to their
    ``names`` (job ids): a label alone, or after a label two runs share.
    """
    fields = [
        field
        for field in dict.fromkeys(key for spec in specs for key in spec)
        if len({json.dumps(spec.get(field), sort_keys=True) for spec in specs}) > 1
    ]
    if len(fields) > 1 and "seed" in fields:
        fields.remove("seed")
    labels = [", ".join(_describe(field, spec.get(field)) for field in fields) for spec in specs]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [
        (f"{label} ({name[:8]})" if label else name[:8]) if label in repeated or not label else label
        for label, name in zip(labels, names, strict=True)
    ]


def _describe(field: str, value: Any) -> str:
    shown = _shown(value)
    name = FIELD_LABELS.get(field, field.replace("_", " "))
    return f"{name} {shown}" if name else shown


def _shown(value: Any) -> str:
    """A spec value as a label: layers as "256-256", booleans as on/off, floats short."""
    if isinstance(value, list):
        return "-".join(str(item) for item in value) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def sample_grid(samples: Sequence[Sample], *, title: str | None = None, fmt: Format = "svg") -> bytes:
    """Test images titled with the true label over the predicted one, as d2l's predict_ch3 shows them;
    a mistake's titles and frame are red."""
    columns = max(1, min(len(samples), SAMPLE_COLUMNS))
    rows = max(1, math.ceil(len(samples) / columns))
    # A title wider than a few images is wrapped to their width (about 13 characters an inch at this size).
    lines = textwrap.wrap(title, width=max(12, int(1.05 * columns * 13))) if title else []
    figure = Figure(
        figsize=(1.05 * columns, 1.35 * rows + 0.2 * len(lines) + (0.1 if lines else 0)), layout="constrained"
    )
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index >= len(samples):
            axes.set_axis_off()
            continue
        sample = samples[index]
        axes.imshow(sample.image, cmap="gray", vmin=0, vmax=255)
        axes.set_xticks([])
        axes.set_yticks([])
        colour = "black" if sample.correct else MISTAKE_COLOUR
        axes.set_title(f"{sample.true_label}\n{sample.predicted_label}", fontsize=7, color=colour)
        for spine in axes.spines.values():
            spine.set_visible(not sample.correct)
            spine.set_color(MISTAKE_COLOUR)
            spine.set_linewidth(2)
        axes.set_gid(f"sample-{index}-{'right' if sample.correct else 'wrong'}")
    if lines:
        figure.suptitle("\n".join(lines), fontsize="small")
    return _render(figure, fmt)


ACTIVATIONS: dict[str, Any] = {"ReLU": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def activation_gradients() -> tuple[np.ndarray[Any, Any], dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]]:
    """x from -8 to 8 and, for each activation, its values and its gradient, the gradient from autograd as
    the chapter computes it (``y.backward(torch.ones_like(x))``)."""
    curves = {}
    for name, function in ACTIVATIONS.items():
        x = torch.arange(-8.0, 8.0, 0.1, requires_grad=True)
        y = function(x)
        y.backward(torch.ones_like(x))
        assert x.grad is not None
        curves[name] = (y.detach().numpy(), x.grad.numpy())
    return torch.arange(-8.0, 8.0, 0.1).numpy(), curves


@functools.cache
def activations(fmt: Format = "svg") -> bytes:
    """ReLU, sigmoid and tanh (top row) and their gradients (bottom row). The same bytes every time: cached."""
    x, curves = activation_gradients()
    figure = Figure(figsize=(8.0, 4.4), layout="constrained")
    grid = figure.subplots(2, len(curves), sharex=True)
    for column, (name, (values, gradient)) in enumerate(curves.items()):
        for row, (ys, label) in enumerate(((values, f"{name}(x)"), (gradient, f"grad of {name}"))):
            axes = grid[row, column]
            (line,) = axes.plot(x, ys)
            line.set_gid(f"{'value' if row == 0 else 'gradient'}-{name}")
            axes.set_title(label, fontsize="medium")
            axes.grid(True)
            if row == 1:
                axes.set_xlabel("x")
    return _render(figure, fmt)


# -- studies ----------------------------------------------------------------------------------------------------

PRUNED_COLOUR = "0.55"
# A pruned trial's legend entry names the epochs trials were pruned at, up to this many; past it, their range.
MAX_LISTED_EPOCHS = 4
OBJECTIVE_LABEL = "validation accuracy"


@dataclass(frozen=True)
class TrialResult:
    """A study's trial as its figures read it: its number (order of suggestion), the job's status, the
    parameters the sampler suggested (decoded: a layer list is a list), its objective (the kept epoch's
    validation accuracy; None unless succeeded), its validation accuracy per epoch, and the epoch the pruner
    stopped it at."""

    number: int
    status: str  # a JobStatus value: queued, running, succeeded, failed, cancelled, pruned
    params: Mapping[str, Any]
    value: float | None
    curve: Mapping[int, float]
    pruned_at_epoch: int | None = None

    @property
    def pruned_point(self) -> tuple[int, float] | None:
        """A pruned trial's last recorded epoch and validation accuracy (None for others, or without any)."""
        if self.status != "pruned" or not self.curve:
            return None
        last = max(self.curve)
        return (self.pruned_at_epoch or last), self.curve[last]


def optimization_history(trials: Sequence[TrialResult], *, title: str | None = None, fmt: Format = "svg") -> bytes:
    """Validation accuracy (0-1) against the trial number, as Optuna's ``plot_optimization_history`` draws it:
    each succeeded trial a point, each pruned one a cross at the last validation accuracy it recorded (one
    legend entry, naming the epochs they were pruned at), and the best so far as a step line. Failed,
    cancelled and unfinished trials have no objective and are left out."""
    figure = Figure(figsize=(6.0, 3.8), layout="constrained")
    axes = figure.add_subplot()
    done = sorted((t.number, t.value) for t in trials if t.status == "succeeded" and t.value is not None)
    pruned = sorted((t.number, point) for t in trials if (point := t.pruned_point) is not None)
    if pruned:
        (marks,) = axes.plot(
            [number for number, _ in pruned],
            [value for _, (_, value) in pruned],
            "x",
            color=PRUNED_COLOUR,
            label=_pruned_label([epoch for _, (epoch, _) in pruned]),
        )
        marks.set_gid("history-pruned")
    if done:
        numbers, values = [number for number, _ in done], [value for _, value in done]
        (points,) = axes.plot(numbers, values, "o", color="C0", label="succeeded", zorder=3)
        points.set_gid("history-succeeded")
        best = list(itertools.accumulate(values, max))
        # The best so far holds until the last trial drawn.
        last = max(numbers[-1], pruned[-1][0] if pruned else 0)
        (line,) = axes.step([*numbers, last], [*best, best[-1]], where="post", color="C1", label="best so far")
        line.set_gid("history-best")
    if not done and not pruned:
        axes.text(0.5, 0.5, "no finished trials yet", transform=axes.transAxes, ha="center", va="center", color="0.4")
    else:
        order = {"succeeded": 0, "best so far": 1}
        handles, labels = axes.get_legend_handles_labels()
        ranked = sorted(zip(handles, labels, strict=True), key=lambda pair: order.get(pair[1], 2))
        figure.legend(
            [handle for handle, _ in ranked],
            [label for _, label in ranked],
            loc="outside lower center",
            ncols=len(ranked),
            fontsize="small",
            frameon=False,
        ).set_gid("legend")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial number")
    axes.set_ylabel(OBJECTIVE_LABEL)
    axes.grid(True)
    if title:
        axes.set_title(title, fontsize="medium")
    return _render(figure, fmt)


def _pruned_label(epochs: Sequence[int]) -> str:
    distinct = sorted(set(epochs))
    if len(distinct) == 1:
        return f"pruned at epoch {distinct[0]}"
    if len(distinct) <= MAX_LISTED_EPOCHS:
        return f"pruned at epochs {', '.join(map(str, distinct[:-1]))} and {distinct[-1]}"
    return f"pruned at epochs {distinct[0]} to {distinct[-1]}"


def param_importances(
    importances: Mapping[str, float], *, title: str | None = None, unavailable: str | None = None, fmt: Format = "svg"
) -> bytes:
    """Each parameter's importance as a horizontal bar, the most important on top, labelled with its share
    (the importances are normalised to sum to 1). ``importances`` is what the caller computed with Optuna's
    fANOVA evaluator (Hutter, Hoos and Leyton-Brown, ICML 2014): the share of the validation accuracy's variance
    across the succeeded trials that each parameter explains. When there are none to show, the figure says why
    in words: ``unavailable``, else that nothing was computed."""
    ranked = sorted(importances.items(), key=lambda item: (-item[1], item[0]))
    if unavailable or not ranked:
        figure = Figure(figsize=(5.5, 2.0), layout="constrained")
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, unavailable or "no importances to show", ha="center", va="center", color="0.3").set_gid(
            "unavailable"
        )
    else:
        figure = Figure(figsize=(5.5, 1.3 + 0.4 * len(ranked)), layout="constrained")
        axes = figure.add_subplot()
        names = [name for name, _ in ranked]
        values = [value for _, value in ranked]
        bars = axes.barh(range(len(ranked)), values, color="C0", gid="importances")
        axes.bar_label(bars, fmt="%.2f", padding=3, fontsize="small")
        axes.set_yticks(range(len(ranked)), labels=names)
        axes.invert_yaxis()  # the first (most important) on top
        axes.set_xlim(0, max(1.0, max(values)) * 1.12)
        axes.set_xlabel("importance (share of the variance, fANOVA)")
        axes.grid(True, axis="x")
    if title:
        axes.set_title(title, fontsize="medium")
    return _render(figure, fmt)


@dataclass(frozen=True)
class _Scale:
    """One axis of the parallel coordinates: where a value sits on it (0 at the bottom, 1 at the top, NaN for
    none) and how its ticks are drawn."""

    place: Callable[[Any], float]
    draw: Callable[[Axes], None]


def parallel_coordinates(
    trials: Sequence[TrialResult],
    space: Mapping[str, Mapping[str, Any]],
    *,
    title: str | None = None,
    fmt: Format = "svg",
) -> bytes:
    """One vertical axis per searched parameter, in the space's order, and a last one for validation accuracy
    (0-1); each trial a line through its values, as Optuna's ``plot_parallel_coordinate`` draws it. Ranges
    span the space's low to high, on a log scale where the space says ``"log": true``; choices are evenly
    spaced and labelled ("256-256" for a layer list). Succeeded trials are coloured by validation accuracy
    (the colour bar), the best drawn on top; pruned trials are thin grey lines ending at the last validation
    accuracy they recorded. A parameter a trial lacks (its ``when`` condition did not hold) leaves a gap."""
    names = list(space)
    done = [t for t in trials if t.status == "succeeded" and t.value is not None]
    values = [t.value for t in done if t.value is not None]
    ends = {t.number: point[1] for t in trials if (point := t.pruned_point) is not None}
    pruned = [t for t in trials if t.number in ends]
    reached = [*values, *ends.values()]
    low, high = _padded(min(reached), max(reached)) if reached else (0.0, 1.0)
    scales = [_parameter_scale(space[name], [t.params[name] for t in trials if name in t.params]) for name in names]
    objective = _linear_scale(low, high, integer=False)

    figure = Figure(figsize=(max(5.0, 1.5 * (len(scales) + 1)), 3.8), layout="constrained")
    host = figure.add_subplot()
    x = range(len(names) + 1)
    host.set_xlim(-0.2, len(names) + 0.2)
    host.set_ylim(0, 1)
    host.set_yticks([])
    for spine in host.spines.values():
        spine.set_visible(False)
    host.set_xticks(x, labels=[*names, "val_acc"])
    host.tick_params(axis="x", length=0)

    def place(trial: TrialResult, value: float) -> list[float]:
        # NaN where the trial lacks the parameter: matplotlib leaves the segments either side of it out.
        return [
            *(
                scale.place(trial.params[name]) if name in trial.params else math.nan
                for scale, name in zip(scales, names, strict=True)
            ),
            objective.place(value),
        ]

    colours = matplotlib.colormaps["viridis"]
    norm = Normalize(*_padded(min(values, default=low), max(values, default=high)))
    for trial in pruned:
        (line,) = host.plot(x, place(trial, ends[trial.number]), color=PRUNED_COLOUR, linewidth=0.7, alpha=0.8)
        line.set_gid(f"pruned-{trial.number}")
    for trial, value in sorted(zip(done, values, strict=True), key=lambda pair: pair[1]):  # the best on top
        (line,) = host.plot(x, place(trial, value), color=colours(norm(value)), linewidth=1.6)
        line.set_gid(f"succeeded-{trial.number}")

    for index, scale in enumerate([*scales, objective]):
        axis = host.twinx()
        for side, spine in axis.spines.items():
            spine.set_visible(side == "right")
        axis.spines["right"].set_position(("data", index))
        axis.tick_params(axis="y", labelsize="small")
        scale.draw(axis)

    if done:
        figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=host, pad=0.02).set_label(OBJECTIVE_LABEL)
    if pruned:
        grey = Line2D([], [], color=PRUNED_COLOUR, linewidth=0.7, label="pruned (last val acc)")
        figure.legend(handles=[grey], loc="outside lower left", fontsize="small", frameon=False).set_gid("legend")
    if not done and not pruned:
        axis.text(  # on the last axis drawn, over the others' spines
            0.5,
            0.5,
            "no finished trials yet",
            transform=host.transAxes,
            ha="center",
            va="center",
            color="0.4",
            bbox={"facecolor": "white", "edgecolor": "none"},
            zorder=5,
        )
    if title:
        host.set_title(title, fontsize="medium")
    return _render(figure, fmt)


def _padded(low: float, high: float) -> tuple[float, float]:
    if high - low < 0.01:
        middle = (low + high) / 2
        low, high = middle - 0.005, middle + 0.005
    margin = (high - low) * 0.05
    return low - margin, high + margin


def _parameter_scale(param: Mapping[str, Any], taken: Sequence[Any]) -> _Scale:
    """The axis of a parameter of the space, given the values the trials took (whole numbers for an int field:
    the space's bounds alone cannot tell, as a float field's 0.0 reads back as 0)."""
    if "choices" in param:
        return _choice_scale(list(param["choices"]))
    low, high = float(param["low"]), float(param["high"])
    integer = all(isinstance(value, int) for value in [param["low"], param["high"], *taken])
    if param.get("log") and low > 0:
        return _log_scale(low, high)
    return _linear_scale(low, high, integer=integer)


def _linear_scale(low: float, high: float, *, integer: bool) -> _Scale:
    if high <= low:
        low, high = low - 0.5, high + 0.5

    def place(value: Any) -> float:
        return math.nan if not isinstance(value, int | float) else (float(value) - low) / (high - low)

    def draw(axis: Axes) -> None:
        axis.set_ylim(low, high)
        axis.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=integer))

    return _Scale(place, draw)


def _log_scale(low: float, high: float) -> _Scale:
    if high <= low:
        low, high = low / 2, high * 2
    span = math.log(high) - math.log(low)

    def place(value: Any) -> float:
        return (math.log(value) - math.log(low)) / span if isinstance(value, int | float) and value > 0 else math.nan

    def draw(axis: Axes) -> None:
        axis.set_yscale("log")
        axis.set_ylim(low, high)
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.01, not 10^-2
        axis.yaxis.set_major_formatter(plain)
        if high / low < 10:  # within a decade there may be no power of ten: label the 2, 3... ticks
            axis.yaxis.set_minor_formatter(plain)

    return _Scale(place, draw)


def _choice_scale(choices: list[Any]) -> _Scale:
    keys = [json.dumps(choice, sort_keys=True) for choice in choices]

    def place(value: Any) -> float:
        key = json.dumps(value, sort_keys=True)
        return (keys.index(key) + 0.5) / len(keys) if key in keys else math.nan

    def draw(axis: Axes) -> None:
        axis.set_ylim(-0.5, len(keys) - 0.5)
        axis.set_yticks(range(len(keys)), labels=[_shown(choice) for choice in choices])

    return _Scale(place, draw)


def _epoch_axis(axes: Axes, epochs: int) -> None:
    # d2l's xlim=[1, num_epochs]; one epoch gets a little room either side instead of an empty range.
    if epochs > 1:
        axes.set_xlim(1, epochs)
    else:
        axes.set_xlim(0.5, 1.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")


def _render(figure: Figure, fmt: Format) -> bytes:
    buffer = io.BytesIO()
    if fmt == "svg":
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


# -- model evaluation (models/evaluation.py) --------------------------------------------------------------------

CONFUSION_COLOURS = "Blues"


def confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], *, title: str | None = None, fmt: Format = "svg"
) -> bytes:
    """The confusion matrix: true class down, predicted class across, each cell's count written in it and
    coloured by its share of the true class (rows normalised, so a rare class's mistakes show as well as a
    common one's)."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = len(class_names)
    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap=CONFUSION_COLOURS, vmin=0.0, vmax=1.0)
    image.set_gid("shares")
    for i in range(size):
        for j in range(size):
            # Dark cells get white figures.
            colour = "white" if shares[i, j] > 0.5 else "black"
            text = axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
            text.set_gid(f"cell-{i}-{j}")
    axes.set_xticks(range(size), labels=class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize="small")
    axes.set_yticks(range(size), labels=class_names, fontsize="small")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    figure.colorbar(image, ax=axes, shrink=0.85).set_label("share of the true class")
    if title:
        axes.set_title(title, fontsize="medium")
    return _render(figure, fmt)


def reliability_diagram(
    bins: Sequence[Mapping[str, Any]], ece: float, *, title: str | None = None, fmt: Format = "svg"
) -> bytes:
    """A reliability diagram as Guo et al. (2017) draw one: per confidence bin, the accuracy of its predictions
    as a bar and the gap to their mean confidence hatched, against the diagonal of perfect calibration; the
    bins' sample counts below (log scale), and the expected calibration error in the title. ``bins``: dicts with
    lower, upper, count, mean_confidence and accuracy (models.evaluation's calibration bins)."""
    figure = Figure(figsize=(4.8, 5.0), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = [b for b in bins if b["count"] and b["accuracy"] is not None and b["mean_confidence"] is not None]
    lower = [b["lower"] for b in filled]
    width = [b["upper"] - b["lower"] for b in filled]
    accuracy = [b["accuracy"] for b in filled]
    gap = [b["mean_confidence"] - b["accuracy"] for b in filled]
    bars = top.bar(lower, accuracy, width, align="edge", color="C0", edgecolor="black", linewidth=0.6, label="accuracy")
    gaps = top.bar(
        lower,
        gap,
        width,
        bottom=accuracy,
        align="edge",
        color=MISTAKE_COLOUR,
        alpha=0.3,
        edgecolor=MISTAKE_COLOUR,
        hatch="//",
        linewidth=0.6,
        label="gap to mean confidence",
    )
    for index, (bar, gap_bar) in enumerate(zip(bars, gaps, strict=True)):
        bar.set_gid(f"accuracy-{index}")
        gap_bar.set_gid(f"gap-{index}")
    (diagonal,) = top.plot([0, 1], [0, 1], "--", color="0.3", linewidth=1, label="perfect calibration")
    diagonal.set_gid("diagonal")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.grid(True, alpha=0.4)
    top.legend(loc="upper left", fontsize="small").set_gid("legend")
    every = [b for b in bins if b["count"]]
    counts = bottom.bar(
        [b["lower"] for b in every],
        [b["count"] for b in every],
        [b["upper"] - b["lower"] for b in every],
        align="edge",
        color="0.6",
        edgecolor="black",
        linewidth=0.6,
    )
    for index, bar in enumerate(counts):
        bar.set_gid(f"count-{index}")
    if every:
        bottom.set_yscale("log")  # most predictions sit in the top bin: the others would not show
    bottom.set_ylabel("samples")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.grid(True, alpha=0.4)
    heading = f"ECE {ece:.4f}"
    top.set_title(f"{title}: {heading}" if title else heading, fontsize="medium")
    return _render(figure, fmt)


@dataclass(frozen=True)
class Mistake:
    """A misclassified test image (28x28 uint8), its true class, the predicted one and that one's probability."""

    image: np.ndarray[Any, np.dtype[np.uint8]]
    true_label: str
    predicted_label: str
    probability: float


def mistake_grid(mistakes: Sequence[Mistake], *, title: str | None = None, fmt: Format = "svg") -> bytes:
    """The most confident mistakes as ``sample_grid`` draws test images: the true label over the predicted
    one with its probability, in red."""
    samples = [Sample(m.image, m.true_label, f"{m.predicted_label} {_percent(m.probability)}") for m in mistakes]
    return sample_grid(samples, title=title, fmt=fmt)


def _percent(probability: float) -> str:
    # Rounded down: a 99.97% guess reads 99.9%, not a 100% that it was not.
    return f"{math.floor(probability * 1000) / 10:g}%"
