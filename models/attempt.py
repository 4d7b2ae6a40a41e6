"""One submit attempt of a job: which fal request it made and how it ended."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, BigIntPK, UTCDateTime, str_enum, utcnow
from models.enums import AttemptOutcome

if TYPE_CHECKING:
    from models.job import Job


class JobAttempt(Base):
    """A row per submit attempt, so a late webhook of an older request is recognisable."""

    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"), UniqueConstraint("fal_request_id"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[AttemptOutcome] = mapped_column(
        str_enum(AttemptOutcome, "attempt_outcome"), default=AttemptOutcome.PENDING
    )
    fal_request_id: Mapped[str | None] = mapped_column(String(100))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="attempt_rows", lazy="raise_on_sql")
