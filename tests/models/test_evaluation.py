"""models/evaluation.py: the metrics against scikit-learn's, and the calibration error against a hand computation."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from torch import nn

from models.data import CLASS_NAMES, DeviceDataset
from models.evaluation import (
    CALIBRATION_BINS,
    EvaluationSet,
    calibration_bins,
    class_scores,
    confused_pairs,
    confusion_matrix,
    evaluate_model,
    evaluate_predictions,
    evaluation_sets,
    expected_calibration_error,
    model_logits,
    most_confident_mistakes,
)
from models.training import EVAL_BATCH_SIZE, Trainer, evaluate, train, train_val_split
from tests.support.specs import spec_of

CLASSES = list(range(10))


def fixed_predictions() -> tuple[np.ndarray, np.ndarray]:
    """300 samples where class 9 is never predicted and class 8 never present, with mistakes of every kind."""
    rng = np.random.default_rng(7)
    labels = rng.choice([c for c in CLASSES if c != 8], size=300)
    predicted = labels.copy()
    flip = rng.random(300) < 0.35
    predicted[flip] = rng.choice([c for c in CLASSES if c != 9], size=int(flip.sum()))
    predicted[predicted == 9] = 3  # the 9s kept right are now wrong too: 9 is never predicted
    assert 8 not in labels and 8 in predicted and 9 in labels and 9 not in predicted
    return labels, predicted


def logits_predicting(predicted: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Random logits whose arg-max is ``predicted``."""
    logits = torch.randn(len(predicted), 10, generator=torch.Generator().manual_seed(seed))
    logits[torch.arange(len(predicted)), torch.as_tensor(predicted)] = logits.max(dim=1).values + 0.5
    return logits


def test_the_confusion_matrix_and_scores_are_scikit_learns() -> None:
    labels, predicted = fixed_predictions()
    ours = confusion_matrix(labels, predicted)
    np.testing.assert_array_equal(ours, sklearn_confusion_matrix(labels, predicted, labels=CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=CLASSES, zero_division=0)
    scores = class_scores(ours)
    np.testing.assert_allclose(scores.precision, precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.recall, recall, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.f1, f1, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(scores.support, support)
    # The two 0/0 cases are 0.0: class 9 is never predicted (its precision), class 8 never present (its recall).
    assert scores.precision[9] == 0.0 and scores.recall[8] == 0.0 and scores.support[8] == 0


def test_the_report_holds_scikit_learns_numbers_with_class_names() -> None:
    labels, predicted = fixed_predictions()
    report = evaluate_predictions(labels, logits=logits_predicting(predicted))
    assert report["accuracy"] == accuracy_score(labels, predicted)
    assert report["confusion_matrix"] == sklearn_confusion_matrix(labels, predicted, labels=CLASSES).tolist()
    _, _, f1, support = precision_recall_fscore_support(labels, predicted, labels=CLASSES, zero_division=0)
    assert [row["class_name"] for row in report["per_class"]] == list(CLASS_NAMES)
    assert [row["class_id"] for row in report["per_class"]] == CLASSES
    assert [row["f1"] for row in report["per_class"]] == pytest.approx(f1.tolist(), abs=1e-12)
    assert [row["support"] for row in report["per_class"]] == support.tolist()
    assert report["split"] == "test" and report["samples"] == 300
    assert json.loads(json.dumps(report)) == report  # JSON-ready as it is


def test_confused_pairs_are_the_largest_off_diagonal_cells() -> None:
    labels, predicted = fixed_predictions()
    matrix = confusion_matrix(labels, predicted)
    pairs = confused_pairs(matrix)
    off_diagonal = sorted(
        ((int(matrix[i, j]), i, j) for i in CLASSES for j in CLASSES if i != j and matrix[i, j]),
        key=lambda cell: (-cell[0], cell[1], cell[2]),
    )[:10]
    assert [(p.count, p.true_class, p.predicted_class) for p in pairs] == off_diagonal
    assert len(pairs) == 10 and all(pairs[k].count >= pairs[k + 1].count for k in range(9))
    for pair in pairs:
        assert pair.share == pair.count / matrix[pair.true_class].sum()
    report = evaluate_predictions(labels, logits=logits_predicting(predicted))
    listed = [(p["count"], p["true_class_id"], p["predicted_class_id"]) for p in report["confused_pairs"]]
    assert listed == off_diagonal
    assert all(p["true_class_name"] == CLASS_NAMES[p["true_class_id"]] for p in report["confused_pairs"])


def test_a_perfect_classifier_confuses_nothing() -> None:
    labels = np.arange(40) % 10
    report = evaluate_predictions(labels, logits=logits_predicting(labels))
    assert report["accuracy"] == 1.0 and report["confused_pairs"] == [] and report["mistakes"] == []
    assert all(row["f1"] == 1.0 for row in report["per_class"])


def test_ece_matches_a_hand_computation() -> None:
    """Eight predictions in three of the 15 bins, worked out by hand from Guo et al.'s definition."""
    confidence = np.array([0.95, 0.97, 0.99, 0.50, 0.52, 0.30, 0.31, 0.32])
    correct = np.array([True, True, False, True, False, False, False, True])
    # Bin (14/15, 1]: 0.95, 0.97, 0.99 -> acc 2/3, conf 0.97; bin (7/15, 8/15]: 0.50, 0.52 -> acc 1/2, conf 0.51;
    # bin (4/15, 5/15]: 0.30, 0.31, 0.32 -> acc 1/3, conf 0.31.
    by_hand = 3 / 8 * abs(2 / 3 - 0.97) + 2 / 8 * abs(1 / 2 - 0.51) + 3 / 8 * abs(1 / 3 - 0.31)
    bins = calibration_bins(confidence, correct)
    assert expected_calibration_error(bins) == pytest.approx(by_hand, abs=1e-12)
    filled = {index: b for index, b in enumerate(bins) if b.count}
    assert sorted(filled) == [4, 7, 14]
    assert filled[14].count == 3 and filled[14].accuracy == pytest.approx(2 / 3)
    assert filled[14].mean_confidence == pytest.approx(0.97)
    assert all(b.mean_confidence is None and b.accuracy is None for b in bins if not b.count)


def test_calibration_bins_are_equal_width_right_closed_and_sum_to_n() -> None:
    bins = calibration_bins(np.array([0.0, 1 / 15, 0.5, 1.0]), np.array([True, False, True, True]))
    assert len(bins) == CALIBRATION_BINS
    assert bins[0].lower == 0.0 and bins[-1].upper == 1.0
    assert all(math.isclose(b.upper - b.lower, 1 / 15) for b in bins)
    assert all(a.upper == b.lower for a, b in itertools.pairwise(bins))
    assert bins[0].count == 2, "0 and the edge 1/15 itself fall in the first bin, (0, 1/15]"
    assert bins[7].count == 1 and bins[14].count == 1
    rng = np.random.default_rng(3)
    n = 1000
    probabilities = torch.softmax(torch.as_tensor(rng.normal(size=(n, 10)) * 3), dim=1).numpy()
    report = evaluate_predictions(rng.integers(0, 10, n), probabilities=probabilities)
    assert sum(b["count"] for b in report["calibration"]["bins"]) == n


def test_a_perfectly_calibrated_classifier_has_zero_ece() -> None:
    """In each bin the share right equals the mean confidence: 8 of 10 right at 0.8, 3 of 5 at 0.6."""
    confidence = np.array([0.8] * 10 + [0.6] * 5)
    correct = np.array([True] * 8 + [False] * 2 + [True] * 3 + [False] * 2)
    assert expected_calibration_error(calibration_bins(confidence, correct)) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(calibration_bins(np.array([]), np.array([], dtype=bool))) == 0.0


def test_ece_from_probabilities_uses_the_predicted_class_probability() -> None:
    probabilities = np.full((4, 10), 0.1 / 9)
    for row, (cls, p) in enumerate([(0, 0.9), (1, 0.9), (2, 0.9), (3, 0.9)]):
        probabilities[row] = (1 - p) / 9
        probabilities[row, cls] = p
    labels = np.array([0, 1, 2, 4])  # three right at 0.9: accuracy 0.75 in that bin
    report = evaluate_predictions(labels, probabilities=probabilities)
    assert report["ece"] == pytest.approx(0.15)
    assert report["accuracy"] == 0.75


def test_a_diverged_models_logits_still_give_finite_json() -> None:
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    logits[0] = float("nan")
    logits[1, 3] = float("inf")
    logits[2, :] = -float("inf")
    labels = torch.tensor([0, 3, 5, 1, 2, 3])
    report = evaluate_predictions(labels, logits=logits)
    json.dumps(report, allow_nan=False)  # raises on NaN or infinity
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 6
    # The arg-max is the training loop's (torch ranks NaN highest), whatever the probabilities.
    assert report["accuracy"] == (logits.argmax(dim=1) == labels).sum().item() / 6


def test_the_most_confident_mistakes_come_first() -> None:
    probabilities = np.array(
        [
            [0.7, 0.3] + [0.0] * 8,  # wrong (label 1), 0.7
            [0.2, 0.8] + [0.0] * 8,  # right
            [0.05, 0.95] + [0.0] * 8,  # wrong (label 0), 0.95
            [0.7, 0.3] + [0.0] * 8,  # wrong (label 1), 0.7: ties go to the earlier row
            [0.6, 0.4] + [0.0] * 8,  # wrong, 0.6
        ]
    )
    labels = np.array([1, 1, 0, 1, 1])
    assert most_confident_mistakes(probabilities, labels, k=3).tolist() == [2, 0, 3]
    report = evaluate_predictions(labels, probabilities=probabilities, rows=np.array([10, 11, 12, 13, 14]))
    assert [m["index"] for m in report["mistakes"]] == [12, 10, 13, 14]
    assert report["mistakes"][0] == {
        "index": 12,
        "true_class_id": 0,
        "true_class_name": CLASS_NAMES[0],
        "predicted_class_id": 1,
        "predicted_class_name": CLASS_NAMES[1],
        "probability": 0.95,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either logits or probabilities"),
        ({"logits": torch.zeros(3, 10), "probabilities": torch.zeros(3, 10)}, "either logits or probabilities"),
        ({"logits": torch.zeros(3, 9)}, "must be (N, 10)"),
        ({"logits": torch.zeros(4, 10)}, "labels must be (4,)"),
    ],
)
def test_bad_shapes_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate_predictions(torch.zeros(3, dtype=torch.int64), **kwargs)


def test_a_models_evaluation_has_the_training_loops_accuracy(synthetic_dataset: DeviceDataset) -> None:
    spec = spec_of(hidden_layers=[16], batch_size=64, epochs=2, val_fraction=0.2, seed=5)
    result = train(spec, synthetic_dataset, seed=5)
    assert result.selected is not None
    _, val_index = train_val_split(len(synthetic_dataset.train_x), 0.2, 5, synthetic_dataset.device)
    assert val_index is not None
    report = evaluate_model(result.model, *evaluation_sets(synthetic_dataset, val_index))
    assert report["accuracy"] == result.selected.test_acc
    assert report["validation"]["accuracy"] == result.selected.val_acc
    assert report["validation"]["split"] == "validation" and report["validation"]["samples"] == len(val_index)
    assert sum(map(sum, report["confusion_matrix"])) == len(synthetic_dataset.test_y)
    mistaken_rows = {m["index"] for m in report["validation"]["mistakes"]}
    assert mistaken_rows <= set(val_index.tolist()), "rows of the training file"
    assert (
        evaluate_model(result.model, EvaluationSet("test", synthetic_dataset.test_x, synthetic_dataset.test_y))[
            "validation"
        ]
        is None
    )


def test_logits_come_in_the_training_loops_batches() -> None:
    model = nn.Sequential(nn.Linear(784, 10))
    inputs = torch.rand(EVAL_BATCH_SIZE + 5, 784)
    labels = torch.randint(0, 10, (len(inputs),))
    model.train()
    logits = model_logits(model, inputs)
    assert logits.shape == (len(inputs), 10) and model.training, "the model's mode is given back"
    assert (logits.argmax(dim=1) == labels).sum().item() / len(inputs) == evaluate(model, inputs, labels)
    assert model_logits(model, inputs[:0]).shape == (0, 10)


@pytest.mark.real_data
def test_the_real_test_split_is_evaluated_whole(real_dataset: DeviceDataset) -> None:
    spec = spec_of(epochs=1, val_fraction=0.1, seed=0)
    trainer = Trainer(spec, real_dataset, seed=0)
    result = trainer.run()
    assert result.selected is not None
    report = evaluate_model(result.model, *evaluation_sets(real_dataset, trainer.val_index))
    assert (
        report["accuracy"] == result.selected.test_acc and report["validation"]["accuracy"] == result.selected.val_acc
    )
    assert sum(map(sum, report["confusion_matrix"])) == 10_000 == sum(row["support"] for row in report["per_class"])
    assert report["validation"]["samples"] == 6_000 and len(report["mistakes"]) == 36
    assert 0.0 <= report["ece"] < 0.2
