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
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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
    if isinstance(value, list):
        shown = "-".join(str(item) for item in value) or "none"
    elif isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, float):
        shown = f"{value:g}"
    else:
        shown = "none" if value is None else str(value)
    name = FIELD_LABELS.get(field, field.replace("_", " "))
    return f"{name} {shown}" if name else shown


def sample_grid(samples: Sequence[Sample], *, title: str | None = None, fmt: Format = "svg") -> bytes:
    """Test images titled with the true label over the predicted one, as d2l's predict_ch3 shows them;
    a mistake's titles and frame are red."""
    columns = max(1, min(len(samples), SAMPLE_COLUMNS))
    rows = max(1, math.ceil(len(samples) / columns))
    figure = Figure(figsize=(1.05 * columns, 1.35 * rows + (0.3 if title else 0)), layout="constrained")
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
    if title:
        figure.suptitle(title, fontsize="small")
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
