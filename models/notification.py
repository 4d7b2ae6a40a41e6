"""Outgoing notifications: each event POSTed to a batch's notify_url, and how its attempts went."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigIntPK, UTCDateTime, str_enum, utcnow


class NotificationEvent(StrEnum):
    """The event types a batch's notify_url receives."""

    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    BATCH_COMPLETED = "batch.completed"


class NotificationOutcome(StrEnum):
    """Where one notification delivery stands."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


class NotificationDelivery(Base):
    """One event for one notify_url; `webhook_id` is stable across retries and redeliveries."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        # Derived from the event and its subject, so a re-run reaction never sends an event twice.
        UniqueConstraint("webhook_id"),
        Index("ix_notification_deliveries_batch_id", "batch_id"),
        Index("ix_notification_deliveries_job_id", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[NotificationEvent] = mapped_column(str_enum(NotificationEvent, "notify_event"))
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    # The exact JSON sent, so every retry carries the same bytes under the same webhook id.
    body: Mapped[str] = mapped_column(Text)
    outcome: Mapped[NotificationOutcome] = mapped_column(
        str_enum(NotificationOutcome, "notify_outcome"), default=NotificationOutcome.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
