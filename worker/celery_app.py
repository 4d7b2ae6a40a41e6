"""The Celery application: broker, queues, routes, reliability options and the beat schedule."""

from __future__ import annotations

import importlib.util
from typing import Any

from celery import Celery, signals

from imagine.settings import get_settings

SUBMIT_QUEUE = "submit"
ARCHIVE_QUEUE = "archive"
MAINTENANCE_QUEUE = "maintenance"
NOTIFY_QUEUE = "notify"
ALL_QUEUES = (SUBMIT_QUEUE, ARCHIVE_QUEUE, MAINTENANCE_QUEUE, NOTIFY_QUEUE)
# Far above the longest countdown we ever set (worker.retry.MAX_COUNTDOWN): a Redis broker
# redelivers an unacknowledged message after this long, and ETA messages stay unacknowledged.
VISIBILITY_TIMEOUT = 4 * 3600


def _task_modules() -> list[str]:
    # worker.notify_tasks belongs to the receiver's engineer and may not exist yet.
    return [name for name in ("worker.tasks", "worker.notify_tasks") if _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _transport_options(broker_url: str) -> dict[str, Any]:
    # Only Redis knows a visibility timeout; the SQLAlchemy transport (the demo's embedded broker)
    # hands every transport option to create_engine, which refuses unknown ones.
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"visibility_timeout": VISIBILITY_TIMEOUT}
    return {}


def make_celery() -> Celery:
    """A Celery app configured from the settings."""
    settings = get_settings()
    app = Celery("imagine", broker=settings.celery_broker_url, include=_task_modules())
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=_transport_options(settings.celery_broker_url),
        broker_connection_retry_on_startup=True,
        task_default_queue=SUBMIT_QUEUE,
        # Routing by queue name alone lets Celery publish through the anonymous exchange, which
        # needs no binding keys in Redis: a flushed broker still delivers to the right list.
        task_routes={
            "worker.tasks.submit_job": {"queue": SUBMIT_QUEUE},
            "worker.tasks.archive_job": {"queue": ARCHIVE_QUEUE},
            "worker.tasks.fetch_result": {"queue": MAINTENANCE_QUEUE},
            "worker.tasks.reconcile": {"queue": MAINTENANCE_QUEUE},
            "worker.notify_tasks.*": {"queue": NOTIFY_QUEUE},
        },
        beat_schedule={
            "reconcile": {
                "task": "worker.tasks.reconcile",
                "schedule": settings.reconcile_interval,
                # A pass that waited this long in the queue is superseded by the next one.
                "options": {"expires": max(settings.reconcile_interval * 2, 1.0)},
            }
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_max_retries=None,
    )
    return app


celery_app = make_celery()


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _reset_after_fork(**_: Any) -> None:
    # A forked child must not share the parent's pooled sockets.
    from models.db import dispose_engines

    dispose_engines()


@signals.celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _configure_slot_waiters(instance: Any = None, **_: Any) -> None:
    from worker import slots

    concurrency = getattr(instance, "concurrency", None)
    if isinstance(concurrency, int):
        slots.configure_waiters(concurrency)
