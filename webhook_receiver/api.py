"""The JSON history API: batches, jobs, archived images, batch creation and cancellation."""

from __future__ import annotations

import hmac
import mimetypes
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from sqlalchemy.orm import Session

from models import Image, JobStatus
from models.queries import MAX_PAGE, batch_summary, get_job_detail, list_batches, list_jobs
from webhook_receiver.exceptions import BadRequestError, NotFoundError, UnauthorizedError
from webhook_receiver.state import receiver_state

api = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_PAGE = 50
MAX_SEARCH_CHARS = 500
MAX_BIGINT = 2**63 - 1


@api.before_request
def require_token() -> None:
    """With API_TOKEN set, every /api route needs `Authorization: Bearer <token>`."""
    token = receiver_state().settings.api_token
    if token is None:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise UnauthorizedError("missing or wrong bearer token")


@contextmanager
def read_session() -> Iterator[Session]:
    """A session for one request's reads; closing it rolls back, nothing here writes."""
    with receiver_state().sessions() as session:
        yield session


def _arg(name: str) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if "\x00" in value:
        raise BadRequestError(f"{name}: NUL character")
    return value


def _uuid_arg(name: str) -> uuid.UUID | None:
    value = _arg(name)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequestError(f"{name}: not a UUID") from None


def _int_arg(name: str, *, low: int, high: int) -> int | None:
    value = _arg(name)
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise BadRequestError(f"{name}: not an integer") from None
    if not low <= number <= high:
        raise BadRequestError(f"{name}: must be between {low} and {high}")
    return number


def _time_arg(name: str) -> datetime | None:
    value = _arg(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequestError(f"{name}: not an ISO 8601 timestamp") from None
    # A timestamp without an offset is read as UTC, like every timestamp the API prints.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _status_arg() -> JobStatus | None:
    value = _arg("status")
    if value is None:
        return None
    try:
        return JobStatus(value.strip().upper())
    except ValueError:
        states = ", ".join(s.value for s in JobStatus)
        raise BadRequestError(f"status: not one of {states}") from None


def _limit() -> int:
    return _int_arg("limit", low=1, high=MAX_PAGE) or DEFAULT_PAGE


def _path_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFoundError(f"no {what} {value}") from None


@api.get("/batches")
def batches() -> Response:
    """A page of batches, newest first, with counts per state."""
    limit, cursor = _limit(), _arg("cursor")
    with read_session() as session:
        page, next_cursor = list_batches(session, limit=limit, cursor=cursor)
    return jsonify(batches=page, next_cursor=next_cursor)


@api.get("/batches/<batch_id>")
def batch(batch_id: str) -> Response:
    """One batch: counts per state, timings, rate, cost estimate."""
    with read_session() as session:
        return jsonify(batch_summary(session, _path_uuid(batch_id, "batch")))


@api.get("/jobs")
def jobs() -> Response:
    """A keyset-paginated page of jobs, newest first, filtered by the query string."""
    search = _arg("q")
    if search is not None and len(search) > MAX_SEARCH_CHARS:
        raise BadRequestError(f"q: longer than {MAX_SEARCH_CHARS} characters")
    filters: dict[str, Any] = {
        "batch_id": _uuid_arg("batch"),
        "status": _status_arg(),
        "search": search,
        "seed": _int_arg("seed", low=-MAX_BIGINT, high=MAX_BIGINT),
        "since": _time_arg("since"),
        "until": _time_arg("until"),
        "limit": _limit(),
        "cursor": _arg("cursor"),
    }
    with read_session() as session:
        page, next_cursor = list_jobs(session, **filters)
    return jsonify(jobs=page, next_cursor=next_cursor)


@api.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    """One job: parameters, seeds, images, attempts and webhook events."""
    with read_session() as session:
        return jsonify(get_job_detail(session, _path_uuid(job_id, "job")))


def archived_file(stored: str | None) -> Path:
    """The archived file at `stored`, refused unless it lies inside ARCHIVE_DIR."""
    if not stored:
        raise NotFoundError("not archived")
    root = receiver_state().settings.archive_dir.resolve()
    # resolve() follows `..` and symlinks, so the containment check sees the real target.
    path = (root / stored).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFoundError("archived file missing")
    return path


def _image(image_id: int) -> Image:
    if image_id > MAX_BIGINT:
        raise NotFoundError(f"no image {image_id}")
    with read_session() as session:
        image = session.get(Image, image_id)
    if image is None:
        raise NotFoundError(f"no image {image_id}")
    return image


@api.get("/images/<int:image_id>")
def image_file(image_id: int) -> Response:
    """The archived full-size image."""
    image = _image(image_id)
    path = archived_file(image.archive_path)
    mimetype = image.content_type or mimetypes.guess_type(path.name)[0]
    return send_file(path, mimetype=mimetype, max_age=86400)


@api.get("/images/<int:image_id>/thumbnail")
def image_thumbnail(image_id: int) -> Response:
    """The archived thumbnail."""
    path = archived_file(_image(image_id).thumbnail_path)
    return send_file(path, max_age=86400)
