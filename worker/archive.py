"""Keeping every image: download (streamed), check, checksum, measure, thumbnail, record."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fal_queue.client import FalQueueClient
from fal_queue.exceptions import FalError
from models import Image, Job, utcnow

logger = logging.getLogger("worker.archive")

THUMB_SIZE = 256
THUMB_DIR = "thumbs"
MAX_ARCHIVE_ATTEMPTS = 6
_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


class ArchiveError(Exception):
    """One image could not be archived this time."""


@dataclass(frozen=True, slots=True)
class ArchiveTarget:
    """An image still to archive."""

    image_id: int
    index: int
    url: str
    job_id: uuid.UUID
    batch_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """The facts of one archived image."""

    path: Path
    thumbnail: Path
    sha256: str
    width: int
    height: int
    size: int


def pending_images(session: Session, job_id: uuid.UUID) -> list[ArchiveTarget]:
    """The job's images not archived yet."""
    rows = session.execute(
        select(Image.id, Image.index.label("n"), Image.url, Job.id.label("job_id"), Job.batch_id)
        .join(Job, Job.id == Image.job_id)
        .where(Image.job_id == job_id, Image.archived_at.is_(None))
        .order_by(Image.index)
    ).all()
    return [ArchiveTarget(r.id, r.n, r.url, r.job_id, r.batch_id) for r in rows]


def archive_image(client: FalQueueClient, target: ArchiveTarget, archive_dir: Path) -> ArchivedFile:
    """Download one image into `archive_dir/<batch>/<job>-<n>.png` and make its thumbnail."""
    folder = archive_dir.resolve() / str(target.batch_id)
    path = folder / f"{target.job_id}-{target.index}.png"
    try:
        download = client.download(target.url, path)
    except FalError as exc:
        raise ArchiveError(f"download failed: {exc}") from exc
    content_type = (download.content_type or "").split(";")[0].strip().lower()
    if not content_type.startswith("image/"):
        path.unlink(missing_ok=True)
        raise ArchiveError(f"not an image: content type {content_type or 'missing'!r}")
    try:
        with PILImage.open(path) as img:
            width, height = img.size
            kind = img.format or "PNG"
            img.thumbnail((THUMB_SIZE, THUMB_SIZE), reducing_gap=2.0)
            thumb = folder / THUMB_DIR / f"{target.job_id}-{target.index}.webp"
            thumb.parent.mkdir(parents=True, exist_ok=True)
            tmp = thumb.with_suffix(".webp.part")
            img.convert("RGB").save(tmp, "WEBP", quality=80)
            os.replace(tmp, thumb)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        path.unlink(missing_ok=True)
        raise ArchiveError(f"not a readable image: {exc}") from exc
    extension = _EXTENSIONS.get(kind, ".png")
    if extension != path.suffix:
        # Keep the name honest when the host sent another format than PNG.
        renamed = path.with_suffix(extension)
        os.replace(path, renamed)
        path = renamed
    return ArchivedFile(path, thumb, download.sha256, width, height, download.bytes_written)


def record_archived(
    session: Session, image_id: int, archived: ArchivedFile, *, now: datetime | None = None
) -> None:
    """Store an archived image's facts."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(
            archive_path=str(archived.path),
            thumbnail_path=str(archived.thumbnail),
            sha256=archived.sha256,
            archived_width=archived.width,
            archived_height=archived.height,
            archived_size=archived.size,
            archived_at=now or utcnow(),
            archive_attempts=Image.archive_attempts + 1,
            archive_error=None,
        )
    )


def record_archive_error(session: Session, image_id: int, message: str) -> None:
    """Count a failed archive attempt and keep its reason."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(archive_attempts=Image.archive_attempts + 1, archive_error=message[:2000])
    )


def archive_job_images(
    client: FalQueueClient, job_id: uuid.UUID, archive_dir: Path, *, database_url: str | None = None
) -> list[str]:
    """Archive every pending image of a job; returns the errors of the images that failed."""
    from models.db import session_scope

    with session_scope(database_url) as session:
        targets = pending_images(session, job_id)
    errors: list[str] = []
    for target in targets:
        try:
            archived = archive_image(client, target, archive_dir)
        except ArchiveError as exc:
            logger.info("archive of image %d of job %s failed: %s", target.index, job_id, exc)
            with session_scope(database_url) as session:
                record_archive_error(session, target.image_id, str(exc))
            errors.append(str(exc))
            continue
        with session_scope(database_url) as session:
            record_archived(session, target.image_id, archived)
    return errors
