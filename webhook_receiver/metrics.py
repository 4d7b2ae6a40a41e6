"""Prometheus metrics: webhook deliveries, signature failures, ingest latency, jobs per state."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models import Job, JobStatus

logger = logging.getLogger(__name__)

# A scrape every few seconds must not turn into a table scan every few seconds.
JOB_STATES_TTL = 5.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def signature_failure_reason(message: str) -> str:
    """A small, fixed label set from WebhookVerificationError's messages."""
    for prefix, reason in (
        ("missing header", "missing_header"),
        ("timestamp not integer", "bad_timestamp"),
        ("timestamp out of tolerance", "timestamp_out_of_tolerance"),
        ("signature not hex", "malformed_signature"),
        ("no key verifies", "no_key_verifies"),
    ):
        if message.startswith(prefix):
            return reason
    return "other"


class JobStateCollector(Collector):
    """Jobs per state, one GROUP BY at most every JOB_STATES_TTL seconds."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float = JOB_STATES_TTL) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: dict[str, int] | None = None
        self._at = 0.0

    def _counts(self) -> dict[str, int] | None:
        with self._lock:
            if self._cached is None or time.monotonic() - self._at > self._ttl:
                try:
                    with self._sessions() as session:
                        rows = session.execute(
                            select(Job.status, func.count()).group_by(Job.status)
                        )
                        counts = {state.value: 0 for state in JobStatus}
                        counts.update({JobStatus(s).value: int(n) for s, n in rows})
                except SQLAlchemyError as exc:
                    # The scrape still answers: other metrics matter most when the DB is down.
                    logger.warning("jobs-by-state metric unavailable: %s", type(exc).__name__)
                    return None
                self._cached, self._at = counts, time.monotonic()
            return self._cached

    def collect(self) -> Iterator[Metric]:
        """Yield the imagine_jobs gauge."""
        counts = self._counts()
        if counts is None:
            return
        gauge = GaugeMetricFamily("imagine_jobs", "Jobs per state.", labels=["state"])
        for state, count in counts.items():
            gauge.add_metric([state], count)
        yield gauge


class ReceiverMetrics:
    """The receiver's metrics in their own registry (so several apps can live in one process)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "imagine_webhook_deliveries",
            "Webhook deliveries by what the receiver did with them.",
            ["outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "imagine_webhook_rejections",
            "Webhook deliveries refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.signature_failures = Counter(
            "imagine_webhook_signature_failures",
            "Webhook deliveries whose signature did not verify, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "imagine_webhook_ingest_seconds",
            "Time from request start to answer of a webhook delivery.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Under gunicorn, PROMETHEUS_MULTIPROC_DIR makes the counters write to shared files and
        # the scrape merge every worker's values; without it each worker reports its own.
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        else:
            self.exposition = self.registry
        self.exposition.register(JobStateCollector(sessions))

    def render(self) -> bytes:
        """The Prometheus exposition text."""
        return generate_latest(self.exposition)
