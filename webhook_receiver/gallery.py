"""The web gallery: read-only HTML pages over the job history, with thumbnails and live progress.

Every page is server-rendered from `models.queries` with Jinja's autoescaping (prompts are user
text). When API_TOKEN is set the gallery is protected by the same token: a login form sets an
HttpOnly cookie holding an HMAC of the token (never the token itself); a bearer header works too.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from imagine.settings import Settings, get_settings
from models.batch import Batch
from models.db import get_session_factory
from models.enums import TERMINAL_STATES, JobStatus
from models.exceptions import NotFoundError
from models.image import Image
from models.queries import (
    InvalidCursorError,
    batch_summary,
    get_job_detail,
    list_batches,
    list_jobs,
    status_counts,
)
from webhook_receiver.state import EXTENSION, ReceiverState

gallery = Blueprint(
    "gallery",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/gallery/static",
)

COOKIE_NAME = "imagine_gallery"
BATCHES_PER_PAGE = 20
JOBS_PER_PAGE = 48
MAX_PROGRESS_IDS = 100
MAX_SEARCH_CHARS = 500
# Scripts, styles and images come from this app only; nothing inline can run even if a bug let
# user text through unescaped.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# In-flight first, then the terminal states, in the order the progress bar draws them.
STATE_ORDER = [
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.IN_PROGRESS,
    JobStatus.SUBMITTED,
    JobStatus.SUBMITTING,
    JobStatus.QUEUED,
]


def _state() -> ReceiverState | None:
    state = current_app.extensions.get(EXTENSION)
    return state if isinstance(state, ReceiverState) else None


def _settings() -> Settings:
    state = _state()
    return state.settings if state else get_settings()


@contextmanager
def _read_session() -> Iterator[Session]:
    """A session for one request's reads; the request owns it and never commits."""
    state = _state()
    sessions = state.sessions if state else get_session_factory(_settings().database_url)
    # Closing the session rolls its transaction back: nothing here ever writes.
    with sessions() as session:
        yield session


def _session_cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"imagine-gallery-session-v1", hashlib.sha256).hexdigest()


def _authorized(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and hmac.compare_digest(
        header.removeprefix("Bearer ").encode(), token.encode()
    ):
        return True
    cookie = request.cookies.get(COOKIE_NAME, "")
    return hmac.compare_digest(cookie.encode(), _session_cookie_value(token).encode())


def _safe_next(target: str | None) -> str:
    """A same-site path to return to after login; anything else goes to the batches page."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("gallery.batches")


@gallery.before_request
def _require_token() -> BaseResponse | None:
    token = _settings().api_token
    if token is None or request.endpoint in ("gallery.login", "gallery.static"):
        return None
    if _authorized(token.get_secret_value()):
        return None
    if request.path.startswith("/gallery/api/") or request.path.startswith("/gallery/images/"):
        abort(401)
    return redirect(url_for("gallery.login", next=request.full_path.rstrip("?")))


@gallery.after_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@gallery.context_processor
def _page_context() -> dict[str, Any]:
    return {"token_protected": _settings().api_token is not None}


@gallery.errorhandler(HTTPException)
def _error_page(error: HTTPException) -> tuple[Response | str, int]:
    code = error.code or 500
    if request.path.startswith("/gallery/api/"):
        return jsonify(error=error.name, detail=error.description), code
    return render_template("error.html", error=error), code


@gallery.app_template_filter("when")
def _when(value: str | None) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS UTC` (the zone is always UTC here)."""
    if not value:
        return "—"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")


@gallery.app_template_filter("filesize")
def _filesize(value: int | None) -> str:
    """A byte count for people."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _duration(start: str | None, end: str | None) -> str | None:
    if not start or not end:
        return None
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        abort(404)


def _progress(counts: dict[str, int]) -> dict[str, Any]:
    """What a progress bar needs: totals and one segment per non-empty state, in draw order."""
    total = sum(counts.values())
    done = sum(counts[s.value] for s in TERMINAL_STATES)
    segments = []
    offset = 0.0
    for state in STATE_ORDER:
        count = counts.get(state.value, 0)
        if count and total:
            width = 1000 * count / total
            segments.append({"state": state.value, "x": round(offset, 2), "w": round(width, 2)})
            offset += width
    return {
        "total": total,
        "done": done,
        "progress": (done / total) if total else 1.0,
        "counts": counts,
        "segments": segments,
    }


@gallery.get("/")
def batches() -> str:
    """The batches page, newest first, with live progress bars."""
    cursor = request.args.get("cursor") or None
    with _read_session() as session:
        try:
            page, next_cursor = list_batches(session, limit=BATCHES_PER_PAGE, cursor=cursor)
        except InvalidCursorError:
            abort(400, "That page link is not valid.")
    for batch in page:
        batch["bar"] = _progress(batch["counts"])
    return render_template(
        "batches.html", batches=page, next_cursor=next_cursor, first_page=cursor is None
    )


def _filter_url(batch_id: str, **params: str | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v})
    base = url_for("gallery.batch", batch_id=batch_id)
    return f"{base}?{query}" if query else base


@gallery.get("/batches/<batch_id>")
def batch(batch_id: str) -> str:
    """One batch: counts per state, status filter, prompt search and a thumbnail grid."""
    parsed = _parse_uuid(batch_id)
    status_arg = request.args.get("status") or None
    query = (request.args.get("q") or "").strip()
    if len(query) > MAX_SEARCH_CHARS or "\x00" in query:
        abort(400, f"Search for at most {MAX_SEARCH_CHARS} characters of text.")
    cursor = request.args.get("cursor") or None
    try:
        status = JobStatus(status_arg) if status_arg else None
    except ValueError:
        abort(400, f"Unknown status {status_arg!r}.")
    with _read_session() as session:
        try:
            summary = batch_summary(session, parsed)
            jobs, next_cursor = list_jobs(
                session,
                batch_id=parsed,
                status=status,
                search=query or None,
                limit=JOBS_PER_PAGE,
                cursor=cursor,
            )
        except NotFoundError:
            abort(404, "There is no batch with that id.")
        except InvalidCursorError:
            abort(400, "That page link is not valid.")
    for job in jobs:
        job["thumb"] = next((img for img in job["images"] if img["thumbnail_path"]), None)
    filters = [
        {
            "label": "All",
            "count": summary["total"],
            "url": _filter_url(batch_id, q=query),
            "active": status is None,
            "state": "",
        }
    ] + [
        {
            "label": state.value.replace("_", " ").title(),
            "count": summary["counts"][state.value],
            "url": _filter_url(batch_id, status=state.value, q=query),
            "active": status == state,
            "state": state.value,
        }
        for state in STATE_ORDER
        if summary["counts"][state.value] or status == state
    ]
    return render_template(
        "batch.html",
        batch=summary,
        bar=_progress(summary["counts"]),
        jobs=jobs,
        filters=filters,
        status=status.value if status else "",
        query=query,
        next_url=(
            _filter_url(batch_id, status=status_arg, q=query, cursor=next_cursor)
            if next_cursor
            else None
        ),
        first_url=_filter_url(batch_id, status=status_arg, q=query) if cursor else None,
        clear_url=_filter_url(batch_id, status=status_arg),
    )


@gallery.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    """One job: its image, prompt, parameters, seeds, timings, attempts and webhook events."""
    parsed = _parse_uuid(job_id)
    with _read_session() as session:
        try:
            detail = get_job_detail(session, parsed)
        except NotFoundError:
            abort(404, "There is no job with that id.")
        batch_name = session.get_one(Batch, uuid.UUID(detail["batch_id"])).name
    timings = [
        ("Created", detail["created_at"]),
        ("Submitted", detail["submitted_at"]),
        ("Started", detail["started_at"]),
        ("Finished", detail["completed_at"]),
        ("Webhook received", detail["webhook_received_at"]),
        ("Last polled", detail["last_polled_at"]),
    ]
    durations = [
        ("Waiting to submit", _duration(detail["created_at"], detail["submitted_at"])),
        ("At fal", _duration(detail["submitted_at"], detail["completed_at"])),
        ("Total", _duration(detail["created_at"], detail["completed_at"])),
    ]
    return render_template(
        "job.html",
        job=detail,
        batch_name=batch_name,
        timings=timings,
        durations=[(label, value) for label, value in durations if value],
    )


@gallery.get("/gallery/api/progress")
def progress() -> Response:
    """Counts per state of the batches named by repeated `batch` parameters, for the live bars."""
    ids = request.args.getlist("batch")[:MAX_PROGRESS_IDS]
    try:
        batch_ids = [uuid.UUID(value) for value in ids]
    except ValueError:
        abort(400, "batch must be a batch id")
    with _read_session() as session:
        counts = status_counts(session, batch_ids)
    return jsonify({str(batch_id): _progress(c) for batch_id, c in counts.items()})


def _archived_file(stored: str | None) -> Path:
    """The archived file at `stored`, refused unless it lies inside ARCHIVE_DIR."""
    if not stored:
        abort(404)
    root = _settings().archive_dir.resolve()
    path = (root / stored).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        abort(404)
    return path


def _image_row(image_id: int) -> Image:
    with _read_session() as session:
        image = session.get(Image, image_id)
        if image is None:
            abort(404)
        session.expunge(image)
        return image


@gallery.get("/gallery/images/<int:image_id>")
def image_file(image_id: int) -> Response:
    """The archived full-size image."""
    image = _image_row(image_id)
    return send_file(
        _archived_file(image.archive_path), mimetype=image.content_type or None, max_age=86400
    )


@gallery.get("/gallery/images/<int:image_id>/thumbnail")
def image_thumbnail(image_id: int) -> Response:
    """The archived thumbnail: what every grid shows instead of the full-size file."""
    image = _image_row(image_id)
    return send_file(_archived_file(image.thumbnail_path), max_age=86400)


@gallery.route("/gallery/login", methods=["GET", "POST"])
def login() -> BaseResponse | str | tuple[str, int]:
    """The token form when API_TOKEN is set; success sets the gallery cookie."""
    token = _settings().api_token
    target = _safe_next(request.values.get("next"))
    if token is None:
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target, failed=False)
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        return render_template("login.html", next=target, failed=True), 401
    response = redirect(target, code=303)
    response.set_cookie(
        COOKIE_NAME,
        _session_cookie_value(token.get_secret_value()),
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )
    return response


@gallery.post("/gallery/logout")
def logout() -> BaseResponse:
    """Forget the gallery cookie."""
    response = redirect(url_for("gallery.login"), code=303)
    response.delete_cookie(COOKIE_NAME)
    return response
