"""What happens to a job whose run raised: the retry policy decides, job code only raises."""

from __future__ import annotations

from dataclasses import dataclass

from models.checkpoints import CheckpointError
from models.data import DatasetUnavailable


class TransientJobError(RuntimeError):
    """A failure worth another attempt (the run itself may succeed next time)."""


# Failures that another attempt would only repeat.
PERMANENT: tuple[type[BaseException], ...] = (DatasetUnavailable, CheckpointError, ValueError)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    reason: str


@dataclass(frozen=True)
class RetryPolicy:
    """Retries transient errors while attempts remain; everything else fails the job at once."""

    retry_on: tuple[type[BaseException], ...] = (TransientJobError, OSError)

    def decide(self, error: BaseException, attempt: int, max_attempts: int) -> RetryDecision:
        message = describe(error)
        if isinstance(error, PERMANENT) or not isinstance(error, self.retry_on):
            return RetryDecision(False, message)
        if attempt >= max_attempts:
            return RetryDecision(False, f"{message} (attempt {attempt} of {max_attempts})")
        return RetryDecision(True, f"{message} (attempt {attempt} of {max_attempts}, retrying)")


def describe(error: BaseException) -> str:
    """The message a user sees: the error's own text, or its type when it has none."""
    text = str(error).strip()
    return text if text else type(error).__name__
