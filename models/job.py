"""A job: one prompt with concrete parameters, submitted to fal at most once at a time."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime, str_enum, utcnow
from models.enums import JobStatus

if TYPE_CHECKING:
    from models.attempt import JobAttempt
    from models.batch import Batch
    from models.image import Image

JOB_STATUS_TYPE = str_enum(JobStatus, "job_status", length=16)


def prompt_hash(
    model: str, prompt: str, aspect_ratio: str, resolution: str, reasoning: str, seed: int
) -> str:
    """Hex sha256 of everything that determines the image, for dedupe."""
    canonical = json.dumps(
        [model, prompt, aspect_ratio, resolution, reasoning, seed],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class Job(Base):
    """One text-to-image request and everything known of its life."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id"),
        UniqueConstraint("fal_request_id"),
        Index("ix_jobs_batch_id_status", "batch_id", "status"),
        Index("ix_jobs_status_status_changed_at", "status", "status_changed_at"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_batch_id_seq", "batch_id", "seq"),
        Index("ix_jobs_prompt_hash", "prompt_hash"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    # Position in the input (its line number for text files), for ordering and error reports.
    seq: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    aspect_ratio: Mapped[str] = mapped_column(String(8))
    resolution: Mapped[str] = mapped_column(String(4))
    reasoning: Mapped[str] = mapped_column(String(8))
    seed: Mapped[int] = mapped_column(BigInteger)
    returned_seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[JobStatus] = mapped_column(JOB_STATUS_TYPE, default=JobStatus.QUEUED)
    fal_request_id: Mapped[str | None] = mapped_column(String(100))
    fal_response_url: Mapped[str | None] = mapped_column(Text)
    gateway_request_id: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the job's id was last handed to the broker; the reconciler re-publishes lost ones.
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Earliest time of the next submit attempt after a retryable error.
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set by every move into a terminal state (COMPLETED, FAILED or CANCELLED).
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    batch: Mapped[Batch] = relationship(back_populates="jobs", lazy="raise_on_sql")
    images: Mapped[list[Image]] = relationship(
        back_populates="job", lazy="raise_on_sql", order_by="Image.index"
    )
    attempt_rows: Mapped[list[JobAttempt]] = relationship(
        back_populates="job", lazy="raise_on_sql", order_by="JobAttempt.number"
    )

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status.value} attempts={self.attempts}>"
