"""Every webhook delivery received, valid or not."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigIntPK, UTCDateTime, str_enum, utcnow
from models.enums import SignatureOutcome, WebhookOutcome

# Bodies are kept for diagnosis up to this many characters; the hash covers the whole body.
MAX_STORED_BODY = 65_536


class WebhookEvent(Base):
    """One delivery; `dedupe_key` is set on the first valid delivery of a result only."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        # NULLs never collide, so repeated deliveries keep their own rows with no key.
        UniqueConstraint("dedupe_key"),
        Index("ix_webhook_events_request_id", "request_id"),
        Index("ix_webhook_events_job_id", "job_id"),
        Index("ix_webhook_events_outcome_received_at", "outcome", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(100))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # The `job_id` query parameter as received; kept even when it names no job.
    job_id_param: Mapped[str | None] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    signature: Mapped[SignatureOutcome] = mapped_column(str_enum(SignatureOutcome, "signature"))
    body_sha256: Mapped[str] = mapped_column(String(64))
    body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(20))
    outcome: Mapped[WebhookOutcome] = mapped_column(str_enum(WebhookOutcome, "webhook_outcome"))
    detail: Mapped[str | None] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(64))
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
