"""An image a job produced: fal's metadata and, once archived, the local copy's facts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, BigIntPK, UTCDateTime, utcnow

if TYPE_CHECKING:
    from models.job import Job


class Image(Base):
    """One output image; `archive_*` columns stay empty until the archive task has run."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(100))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_name: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    archive_path: Mapped[str | None] = mapped_column(Text)
    thumbnail_path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    archived_width: Mapped[int | None] = mapped_column(Integer)
    archived_height: Mapped[int | None] = mapped_column(Integer)
    archived_size: Mapped[int | None] = mapped_column(BigInteger)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archive_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    archive_error: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="images", lazy="raise_on_sql")
