"""Operations endpoints: /healthz for load balancers, /metrics for Prometheus."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from kombu.connection import Connection
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from webhook_receiver.state import receiver_state

ops = Blueprint("ops", __name__)

BROKER_TIMEOUT = 2.0


def _database_ok() -> str:
    try:
        with receiver_state().sessions() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def _broker_ok() -> str:
    url = receiver_state().settings.celery_broker_url
    try:
        with Connection(url, connect_timeout=BROKER_TIMEOUT) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any transport's failure means "unreachable"
        # Only the class name: the URL may hold a password.
        return f"unreachable ({type(exc).__name__})"
    return "ok"


@ops.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when the database and the broker answer, else 503; JSON says which failed."""
    checks = {"database": _database_ok(), "broker": _broker_ok()}
    healthy = all(value == "ok" for value in checks.values())
    return jsonify(
        status="ok" if healthy else "unavailable", checks=checks
    ), 200 if healthy else 503


@ops.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition."""
    return Response(receiver_state().metrics.render(), content_type=CONTENT_TYPE_LATEST)
