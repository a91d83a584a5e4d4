"""A trained classifier's evaluation: confusion matrix, per-class scores, most-confused pairs, calibration.

Pure PyTorch and numpy, from a model's logits (or probabilities) and the true labels; the result is a
JSON-ready dict that the worker stores with the model once its job succeeds (``models.evaluation`` in the
database) and the API serves (``GET /v1/models/{ref}/evaluation``) and draws.

Conventions:

- The confusion matrix ``C`` is (classes, classes): ``C[i, j]`` counts the samples of true class ``i``
  predicted as ``j`` (rows true, columns predicted), as ``sklearn.metrics.confusion_matrix`` lays it out.
- Precision of class ``c`` is ``C[c, c] / C[:, c].sum()``, recall ``C[c, c] / C[c, :].sum()``, F1
  ``2 tp / (2 tp + fp + fn)``; a ratio whose denominator is 0 (a class never predicted, or never present) is
  0.0, as scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)`` defines it.
- A prediction is the arg-max of the logits (the first of equal maxima), the same operation as the training
  loop's ``models.training.evaluate``, so the accuracy here is the epoch's ``test_acc``. Its confidence is the
  softmax probability of that class. A sample whose probabilities are not finite (a diverged model's NaN or
  infinite logits) counts as uniform, confidence 1/classes, so that every number in the result is finite.
- Calibration follows Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks" (ICML
  2017), section 2: confidences fall in ``M = 15`` equal-width bins ``((m-1)/M, m/M]`` (0 itself in the first),
  and the expected calibration error is ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``, where ``acc`` is
  the share of correct predictions in bin ``m`` and ``conf`` their mean confidence. An empty bin adds nothing
  and reports no mean confidence or accuracy (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.data import CLASS_NAMES, DeviceDataset
from models.training import EVAL_BATCH_SIZE

CALIBRATION_BINS = 15  # Guo et al. (2017) use 15 bins
TOP_CONFUSED_PAIRS = 10
# The most confident mistakes kept per split: enough for the largest grid the API draws.
MISTAKES_KEPT = 36

IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


# -- the pieces -------------------------------------------------------------------------------------------
def confusion_matrix(labels: IntArray, predicted: IntArray, num_classes: int = len(CLASS_NAMES)) -> IntArray:
    """(num_classes, num_classes) int64 counts, rows the true class and columns the predicted one, from
    ``labels`` and ``predicted`` of shape (N,) with values in 0..num_classes-1."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if labels.shape != predicted.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} must be (N,) alike")
    flat = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


@dataclass(frozen=True)
class ClassScores:
    """Per class, each (num_classes,): precision, recall, F1 (0.0 where a ratio would be 0/0) and support (the
    number of samples of that true class)."""

    precision: FloatArray
    recall: FloatArray
    f1: FloatArray
    support: IntArray


def class_scores(confusion: IntArray) -> ClassScores:
    """Precision, recall, F1 and support per class from a confusion matrix (rows true, columns predicted)."""
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)  # tp + fp
    support = confusion.sum(axis=1)  # tp + fn
    f1_denominator = predicted + support  # 2 tp + fp + fn
    return ClassScores(
        precision=_ratio(tp, predicted),
        recall=_ratio(tp, support.astype(np.float64)),
        f1=_ratio(2 * tp, f1_denominator.astype(np.float64)),
        support=support.astype(np.int64),
    )


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """numerator / denominator elementwise, 0.0 where the denominator is 0."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@dataclass(frozen=True)
class ConfusedPair:
    """Samples of class ``true_class`` predicted as ``predicted_class``: ``count`` of them, ``share`` of that
    true class's samples."""

    true_class: int
    predicted_class: int
    count: int
    share: float


def confused_pairs(confusion: IntArray, top: int = TOP_CONFUSED_PAIRS) -> list[ConfusedPair]:
    """The ``top`` largest off-diagonal cells, largest first (ties: by true class, then predicted class); cells
    with no samples are left out."""
    support = confusion.sum(axis=1)
    cells = [
        (int(confusion[i, j]), i, j)
        for i in range(confusion.shape[0])
        for j in range(confusion.shape[1])
        if i != j and confusion[i, j] > 0
    ]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [ConfusedPair(i, j, count, count / int(support[i])) for count, i, j in cells[:top]]


@dataclass(frozen=True)
class CalibrationBin:
    """Confidences in (lower, upper]: how many, their mean confidence and the share of them predicted right
    (both None for an empty bin)."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


def calibration_bins(confidence: FloatArray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> list[CalibrationBin]:
    """The reliability diagram's data (Guo et al., 2017): ``confidence`` (N,) in [0, 1], the probability of the
    predicted class, and ``correct`` (N,) booleans, into ``bins`` equal-width bins ``(lower, upper]`` (0 in the
    first). The counts sum to N."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The number of inner edges strictly below each confidence: bin m holds (edges[m], edges[m + 1]].
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=bins)
    confidence_sums = np.bincount(index, weights=confidence, minlength=bins)
    correct_sums = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    return [
        CalibrationBin(
            lower=float(edges[m]),
            upper=float(edges[m + 1]),
            count=int(counts[m]),
            mean_confidence=float(confidence_sums[m] / counts[m]) if counts[m] else None,
            accuracy=float(correct_sums[m] / counts[m]) if counts[m] else None,
        )
        for m in range(bins)
    ]


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float:
    """ECE = sum over bins of (bin count / N) * |accuracy - mean confidence| (Guo et al., 2017, eq. 3); 0.0
    without samples."""
    total = sum(b.count for b in bins)
    if total == 0:
        return 0.0
    return float(
        sum(
            b.count / total * abs(b.accuracy - b.mean_confidence)
            for b in bins
            if b.count and b.accuracy is not None and b.mean_confidence is not None
        )
    )


def most_confident_mistakes(
    probabilities: FloatArray, labels: IntArray, k: int = MISTAKES_KEPT, predicted: IntArray | None = None
) -> IntArray:
    """Positions (into the N rows) of the ``k`` misclassified samples whose predicted class had the highest
    probability, most confident first (ties: the lower position first). ``probabilities`` (N, classes);
    ``predicted`` (N,), by default their arg-max (pass the logits' arg-max to match the accuracy exactly)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1) if predicted is None else np.asarray(predicted, dtype=np.int64)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    order = np.lexsort((wrong, -confidence))  # the last key sorts first
    return wrong[order[:k]].astype(np.int64)


# -- the whole evaluation ---------------------------------------------------------------------------------
def evaluate_predictions(
    labels: torch.Tensor | np.ndarray,
    *,
    logits: torch.Tensor | np.ndarray | None = None,
    probabilities: torch.Tensor | np.ndarray | None = None,
    split: str = "test",
    rows: torch.Tensor | np.ndarray | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    bins: int = CALIBRATION_BINS,
    top_pairs: int = TOP_CONFUSED_PAIRS,
    mistakes: int = MISTAKES_KEPT,
) -> dict[str, Any]:
    """One split's evaluation as a JSON-ready dict, from ``labels`` (N,) and either ``logits`` or
    ``probabilities`` (N, classes), on any device.

    ``rows`` (N,): each sample's row in the file it comes from (the training file for a validation split),
    reported for the mistakes; by default its position. The dict holds ``split``, ``samples`` (N),
    ``accuracy`` (top-1), ``confusion_matrix`` (rows true, columns predicted), ``per_class`` ({class_id,
    class_name, precision, recall, f1, support}), ``confused_pairs`` ({true_class_id, true_class_name,
    predicted_class_id, predicted_class_name, count, share}), ``ece``, ``calibration`` ({"bins": [{lower,
    upper, count, mean_confidence, accuracy}]}) and ``mistakes`` (the most confident, {index, true_class_id,
    true_class_name, predicted_class_id, predicted_class_name, probability}).
    """
    if (logits is None) == (probabilities is None):
        raise ValueError("give either logits or probabilities")
    scores = torch.as_tensor(logits if logits is not None else probabilities)
    if scores.dim() != 2 or scores.shape[1] != len(class_names):
        raise ValueError(f"scores must be (N, {len(class_names)}), not {tuple(scores.shape)}")
    target = torch.as_tensor(labels).to(torch.int64)
    if target.shape != scores.shape[:1]:
        raise ValueError(f"labels must be ({scores.shape[0]},), not {tuple(target.shape)}")
    # The arg-max of what was given, on its device: the training loop's own operation on the logits.
    predicted = scores.argmax(dim=1).cpu().numpy().astype(np.int64)
    if logits is not None:
        probs = torch.softmax(scores.detach().to(torch.float64), dim=1).cpu().numpy()
    else:
        probs = scores.detach().to(torch.float64).cpu().numpy()
    # A diverged model's NaN or infinite logits give no probabilities: its rows count as uniform (1/classes), so
    # that every number stays finite (JSON has no NaN) and the bins still hold every sample.
    probs = np.where(np.isfinite(probs).all(axis=1, keepdims=True), probs, 1.0 / len(class_names))  # a new array
    truth = target.cpu().numpy()
    count = len(truth)
    confidence = probs[np.arange(count), predicted]
    correct = predicted == truth

    confusion = confusion_matrix(truth, predicted, len(class_names))
    scores_per_class = class_scores(confusion)
    reliability = calibration_bins(confidence, correct, bins)
    row_ids = np.arange(count) if rows is None else torch.as_tensor(rows).cpu().numpy()
    names = list(class_names)
    return {
        "split": split,
        "samples": count,
        # Python ints divided, as models.training.evaluate divides them: the same float.
        "accuracy": int(correct.sum()) / max(count, 1),
        "confusion_matrix": confusion.tolist(),
        "per_class": [
            {
                "class_id": c,
                "class_name": names[c],
                "precision": float(scores_per_class.precision[c]),
                "recall": float(scores_per_class.recall[c]),
                "f1": float(scores_per_class.f1[c]),
                "support": int(scores_per_class.support[c]),
            }
            for c in range(len(names))
        ],
        "confused_pairs": [
            {
                "true_class_id": pair.true_class,
                "true_class_name": names[pair.true_class],
                "predicted_class_id": pair.predicted_class,
                "predicted_class_name": names[pair.predicted_class],
                "count": pair.count,
                "share": pair.share,
            }
            for pair in confused_pairs(confusion, top_pairs)
        ],
        "ece": expected_calibration_error(reliability),
        "calibration": {
            "bins": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "mean_confidence": b.mean_confidence,
                    "accuracy": b.accuracy,
                }
                for b in reliability
            ]
        },
        "mistakes": [
            {
                "index": int(row_ids[position]),
                "true_class_id": int(truth[position]),
                "true_class_name": names[int(truth[position])],
                "predicted_class_id": int(predicted[position]),
                "predicted_class_name": names[int(predicted[position])],
                "probability": float(confidence[position]),
            }
            for position in most_confident_mistakes(probs, truth, mistakes, predicted)
        ],
    }


@torch.no_grad()
def model_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """The model's logits (N, classes) for ``inputs`` (N, 784), in eval mode, in batches of ``batch_size``:
    by default the training loop's, so that the same kernels give the same logits as its accuracy saw."""
    was_training = model.training
    model.eval()
    try:
        parts = [model(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)]
    finally:
        model.train(was_training)
    if not parts:
        return torch.empty((0, len(CLASS_NAMES)), device=inputs.device)
    return torch.cat(parts)


@dataclass(frozen=True)
class EvaluationSet:
    """Labelled inputs to evaluate on: float32 (N, 784) in [0, 1] on the model's device, int64 labels (N,), and
    each row's index in its source file (None: the rows are the file's, in order)."""

    split: str
    inputs: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor | None = None


def evaluate_model(model: nn.Module, test: EvaluationSet, validation: EvaluationSet | None = None) -> dict[str, Any]:
    """What is stored with a model: ``test``'s evaluation (``evaluate_predictions``), with ``validation``'s in
    its ``"validation"`` key (None without a validation split)."""

    def one(data: EvaluationSet) -> dict[str, Any]:
        return evaluate_predictions(
            data.labels, logits=model_logits(model, data.inputs), split=data.split, rows=data.rows
        )

    return {**one(test), "validation": one(validation) if validation is not None else None}


def evaluation_sets(data: DeviceDataset, val_index: torch.Tensor | None) -> tuple[EvaluationSet, EvaluationSet | None]:
    """A run's test set and, when it held some training rows out (``val_index``), its validation set."""
    test = EvaluationSet("test", data.test_x, data.test_y)
    if val_index is None:
        return test, None
    return test, EvaluationSet("validation", data.train_x[val_index], data.train_y[val_index], val_index)
