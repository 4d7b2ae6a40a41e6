"""What the receiver hands to the workers after its transaction commits: the one seam tests fake."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

logger = logging.getLogger(__name__)


class PostCommit(Protocol):
    """Work that must start only once the database says the job moved."""

    def jobs_finished(self, job_ids: Sequence[uuid.UUID]) -> None:
        """Jobs reached a terminal state: wake waiters, archive, react."""

    def fetch_result(self, job_id: uuid.UUID) -> None:
        """A webhook came without a payload: fetch the result from fal's queue."""


class CeleryPostCommit:
    """The real thing: the pipeline's events and tasks, imported lazily so no broker is touched
    (and `worker` need not exist yet) until a job actually finishes."""

    def __init__(self, database_url: str | None = None) -> None:
        self.database_url = database_url

    def jobs_finished(self, job_ids: Sequence[uuid.UUID]) -> None:
        """Call `worker.events.after_jobs_finished`."""
        from worker.events import after_jobs_finished

        after_jobs_finished(list(job_ids), database_url=self.database_url)

    def fetch_result(self, job_id: uuid.UUID) -> None:
        """Enqueue `worker.tasks.fetch_result`."""
        from worker.tasks import fetch_result

        fetch_result.delay(str(job_id))


def run_post_commit(
    dispatch: PostCommit, finished: Sequence[uuid.UUID], fetch: Sequence[uuid.UUID]
) -> bool:
    """Hand committed work to the workers; False (logged) when the broker refused it.

    The commit already happened, so a failure here must not fail the caller: the reconciler
    finds unfetched and unarchived jobs on its own.
    """
    ok = True
    if finished:
        try:
            dispatch.jobs_finished(finished)
        except Exception:
            logger.exception(
                "could not publish the follow-up work of %d finished job(s)", len(finished)
            )
            ok = False
    for job_id in fetch:
        try:
            dispatch.fetch_result(job_id)
        except Exception:
            logger.exception("could not enqueue the result fetch of job %s", job_id)
            ok = False
    return ok
