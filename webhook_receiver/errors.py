"""Errors become JSON answers here, at the edge, and nowhere else."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from models.exceptions import NotFoundError as ModelNotFoundError
from models.queries import InvalidCursorError
from webhook_receiver.exceptions import ReceiverError

logger = logging.getLogger(__name__)


def error_response(
    status: int, code: str, message: str, errors: list[dict[str, object]] | None = None
) -> tuple[Response, int]:
    """The JSON error body every route answers with."""
    body: dict[str, object] = {"error": code, "message": message}
    if errors is not None:
        body["errors"] = errors
    return jsonify(body), status


def _receiver_error(exc: ReceiverError) -> tuple[Response, int]:
    response, status = error_response(exc.status_code, exc.code, exc.message, exc.errors)
    if exc.status_code == 401 and request.path.startswith("/api"):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response, status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    code = (exc.name or "error").lower().replace(" ", "_")
    return error_response(exc.code or 500, code, exc.description or code)


def _database_error(exc: SQLAlchemyError) -> tuple[Response, int]:
    # Never the statement or URL: they may carry data or credentials.
    logger.error("database error on %s %s: %s", request.method, request.path, type(exc).__name__)
    return error_response(503, "unavailable", "database unavailable, retry later")


def _unexpected(exc: Exception) -> tuple[Response, int]:
    logger.exception("unexpected error on %s %s", request.method, request.path)
    if request.path.startswith("/webhooks"):
        # fal retries non-2xx answers for two hours; a 503 asks for exactly that.
        return error_response(503, "unavailable", "temporarily unavailable, retry later")
    return error_response(500, "internal_error", "internal error")


def register_error_handlers(app: Flask) -> None:
    """Map every error class to its status code."""
    app.register_error_handler(ReceiverError, _receiver_error)
    app.register_error_handler(
        ModelNotFoundError, lambda exc: error_response(404, "not_found", str(exc))
    )
    app.register_error_handler(
        InvalidCursorError, lambda exc: error_response(400, "bad_request", str(exc))
    )
    app.register_error_handler(HTTPException, _http_error)
    for unavailable in (OperationalError, InterfaceError, PoolTimeoutError):
        app.register_error_handler(unavailable, _database_error)
    app.register_error_handler(Exception, _unexpected)
