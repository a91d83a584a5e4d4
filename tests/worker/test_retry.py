"""service/worker/retry.py: the policy decides; job code only raises."""

from __future__ import annotations

import pytest

from models.checkpoints import CheckpointError
from models.data import DatasetUnavailable
from service.worker.retry import RetryPolicy, TransientJobError


@pytest.mark.parametrize(
    ("error", "attempt", "retry"),
    [
        (TransientJobError("blip"), 1, True),
        (OSError("disk full"), 2, True),
        (OSError("disk full"), 3, False),
        (DatasetUnavailable("set FMNIST_DATA_DIR"), 1, False),
        (CheckpointError("bad"), 1, False),
        (ValueError("bad spec"), 1, False),
        (RuntimeError("bug"), 1, False),
    ],
)
def test_decisions(error: Exception, attempt: int, retry: bool) -> None:
    decision = RetryPolicy().decide(error, attempt=attempt, max_attempts=3)
    assert decision.retry is retry
    assert str(error) in decision.reason


def test_an_error_without_text_is_named_by_its_type() -> None:
    assert RetryPolicy().decide(RuntimeError(), 1, 3).reason == "RuntimeError"
