"""A batch: one user's file of prompts and the defaults it was enqueued with."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Integer, Numeric, String, Text, Uuid, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, JSONType, UTCDateTime, utcnow

if TYPE_CHECKING:
    from models.job import Job


class Batch(Base):
    """A named group of jobs; counts per state are derived from its jobs, never stored."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source: Mapped[str | None] = mapped_column(String(500))
    total_jobs: Mapped[int] = mapped_column(Integer, default=0)
    price_estimate_usd: Mapped[Decimal] = mapped_column(Numeric(12, 4), default=Decimal(0))
    notify_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pause_reason: Mapped[str | None] = mapped_column(Text)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set once, by a conditional update, when the last job reached a terminal state.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    jobs: Mapped[list[Job]] = relationship(back_populates="batch", lazy="raise_on_sql")

    def __repr__(self) -> str:
        return f"<Batch {self.id} {self.name!r} jobs={self.total_jobs}>"
