"""The JSON history API: batches, jobs, archived images, batch creation and cancellation."""

from __future__ import annotations

import hmac
import json
import mimetypes
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, jsonify, request, send_file
from sqlalchemy.orm import Session

from models import AspectRatio, Batch, Image, JobStatus, Reasoning, Resolution, utcnow
from models.queries import MAX_PAGE, batch_summary, get_job_detail, list_batches, list_jobs
from webhook_receiver.exceptions import BadRequestError, NotFoundError, UnauthorizedError
from webhook_receiver.state import receiver_state
from webhook_receiver.webhooks import read_body
from worker.enqueue import Defaults

api = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_PAGE = 50
MAX_SEARCH_CHARS = 500
MAX_BIGINT = 2**63 - 1
MAX_API_BODY = 16 * 1024 * 1024
# Bigger batches go through `imagine enqueue FILE`, which streams instead of holding a list.
MAX_API_PROMPTS = 100_000
MAX_NAME_CHARS = 200
MAX_URL_CHARS = 2000
MAX_SEEDS_PER_PROMPT = 100


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


def _choice(body: dict[str, Any], name: str, allowed: list[str], default: str) -> str:
    value = body.get(name, default)
    if value not in allowed:
        raise BadRequestError(f"{name}: not one of {', '.join(allowed)}")
    return str(value)


def _optional_int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequestError(f"{name}: must be an integer between {low} and {high}")
    return value


def _notify_url(body: dict[str, Any]) -> str | None:
    url = body.get("notify_url")
    if url is None:
        return None
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise BadRequestError("notify_url: must be a string URL")
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BadRequestError("notify_url: must be an absolute http(s) URL")
    if receiver_state().settings.notify_secret is None:
        # Notifications are never sent unsigned; accepting the URL would silently drop them.
        raise BadRequestError("notify_url: this server has no NOTIFY_SECRET to sign with")
    return url


def parse_batch_request(body: Any) -> tuple[list[Any], dict[str, Any]]:
    """The rows and enqueue options of a POST /api/batches body (a list, or an object)."""
    if isinstance(body, list):
        body = {"prompts": body}
    if not isinstance(body, dict):
        raise BadRequestError("body must be a JSON list of prompts or an object with 'prompts'")
    prompts = body.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise BadRequestError("prompts: must be a non-empty list")
    if len(prompts) > MAX_API_PROMPTS:
        raise BadRequestError(f"prompts: at most {MAX_API_PROMPTS} per request")
    rows = [{"prompt": item} if isinstance(item, str) else item for item in prompts]
    name = body.get("name", f"api {utcnow():%Y-%m-%d %H:%M:%S}")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise BadRequestError(f"name: must be a non-empty string of at most {MAX_NAME_CHARS}")
    defaults = Defaults(
        aspect_ratio=_choice(body, "aspect_ratio", [a.value for a in AspectRatio], "1:1"),
        resolution=_choice(body, "resolution", [r.value for r in Resolution], "2K"),
        reasoning=_choice(body, "reasoning", [r.value for r in Reasoning], "low"),
        seed=_optional_int(body, "seed", -1, MAX_BIGINT),
        seeds_per_prompt=_optional_int(body, "seeds_per_prompt", 1, MAX_SEEDS_PER_PROMPT) or 1,
    )
    max_cost = body.get("max_cost")
    if max_cost is not None and (
        not isinstance(max_cost, int | float) or isinstance(max_cost, bool) or max_cost < 0
    ):
        raise BadRequestError("max_cost: must be a non-negative number")
    options = {
        "name": name.strip(),
        "defaults": defaults,
        "notify_url": _notify_url(body),
        "dedupe": body.get("dedupe") is True,
        "max_cost": float(max_cost) if max_cost is not None else None,
    }
    return rows, options


@api.post("/batches")
def create_batch() -> tuple[Response, int]:
    """Enqueue a batch from a JSON list of prompts (same rules as `imagine enqueue`); 202."""
    from worker.enqueue import enqueue_rows
    from worker.exceptions import EnqueueError, InvalidInputError, OverBudgetError

    state = receiver_state()
    try:
        body = json.loads(read_body(MAX_API_BODY))
    except (ValueError, RecursionError):
        raise BadRequestError("body is not JSON") from None
    rows, options = parse_batch_request(body)
    try:
        result = enqueue_rows(
            rows,
            settings=state.settings,
            database_url=state.settings.database_url,
            source_label="POST /api/batches",
            **options,
        )
    except InvalidInputError as exc:
        errors: list[dict[str, object]] = [
            {"row": e.line, "field": e.field, "message": e.message} for e in exc.errors
        ]
        first = exc.errors[0] if exc.errors else None
        where = f"row {first.line}: {first.message}" if first else "invalid rows"
        raise BadRequestError(
            f"{exc.count} invalid row(s), nothing enqueued; {where}", errors
        ) from None
    except (OverBudgetError, EnqueueError) as exc:
        raise BadRequestError(str(exc)) from None
    answer = result.summary()
    response = jsonify(answer)
    response.headers["Location"] = f"/api/batches/{answer['batch_id']}"
    return response, 202


@api.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> tuple[Response, int]:
    """Cancel every unfinished job of a batch (asking fal to stop the running ones)."""
    from worker.control import Target, cancel
    from worker.fal import get_fal_client

    parsed = _path_uuid(batch_id, "batch")
    state = receiver_state()
    with read_session() as session:
        if session.get(Batch, parsed) is None:
            raise NotFoundError(f"no batch {batch_id}")
    client = get_fal_client() if state.settings.fal_key is not None else None
    report = cancel(
        Target("batch", parsed, parsed), client, database_url=state.settings.database_url
    )
    answer = {
        "batch_id": str(parsed),
        "cancelled": report.cancelled_local + report.cancelled_at_fal,
        "cancelled_at_fal": report.cancelled_at_fal,
        "fal_answers": report.fal_answers,
    }
    return jsonify(answer), 202
