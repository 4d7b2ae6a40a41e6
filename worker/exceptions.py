"""Errors of the pipeline: what enqueue refuses and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.enqueue import RowError


class PipelineError(Exception):
    """Base of every error raised by `worker`."""


class EnqueueError(PipelineError):
    """The input cannot become a batch (unreadable, empty, bad options)."""


class InvalidInputError(EnqueueError):
    """Some rows are invalid and `skip_invalid` was not given; `errors` name line and column."""

    def __init__(self, errors: Sequence[RowError], count: int) -> None:
        self.errors = list(errors)
        self.count = count
        shown = "\n".join(f"  {error}" for error in self.errors[:20])
        more = f"\n  ... and {count - 20} more" if count > 20 else ""
        super().__init__(f"{count} invalid row(s); nothing was enqueued:\n{shown}{more}")


class OverBudgetError(EnqueueError):
    """The batch's estimated cost exceeds the `max_cost` given."""

    def __init__(self, estimate: float, max_cost: float) -> None:
        self.estimate = estimate
        self.max_cost = max_cost
        super().__init__(
            f"estimated cost ${estimate:.2f} exceeds the maximum ${max_cost:.2f}; nothing enqueued"
        )


class NotFoundError(PipelineError):
    """No batch or job has the id given."""
