"""What follows a job reaching a terminal state, for whoever moved it (receiver, poller, worker)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from sqlalchemy import select

from imagine.settings import get_settings
from models import Job, JobStatus
from models.db import session_scope
from models.results import finish_batch_if_done
from worker.celery_app import NOTIFY_QUEUE, celery_app
from worker.publish import publish_archives
from worker.slots import get_slot_signal

logger = logging.getLogger("worker.events")


def after_jobs_finished(job_ids: Sequence[uuid.UUID], *, database_url: str | None = None) -> None:
    """Call AFTER COMMIT: wake slot waiters, archive, stamp finished batches, send reactions."""
    if not job_ids:
        return
    get_slot_signal().announce(len(job_ids))
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Job.id, Job.batch_id, Job.status).where(Job.id.in_(list(job_ids)))
        ).all()
        finished_batches = [
            batch_id
            for batch_id in sorted({row.batch_id for row in rows})
            if finish_batch_if_done(session, batch_id)
        ]
    completed = [row.id for row in rows if row.status is JobStatus.COMPLETED]
    if completed and get_settings().archive_enabled:
        publish_archives(completed)
    with celery_app.producer_or_acquire() as producer:
        for row in rows:
            celery_app.send_task(
                "worker.notify_tasks.react_to_job",
                args=[str(row.id)],
                queue=NOTIFY_QUEUE,
                producer=producer,
            )
        for batch_id in finished_batches:
            logger.info("batch %s finished", batch_id)
            celery_app.send_task(
                "worker.notify_tasks.react_to_batch",
                args=[str(batch_id)],
                queue=NOTIFY_QUEUE,
                producer=producer,
            )
