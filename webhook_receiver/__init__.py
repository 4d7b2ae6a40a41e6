"""The Flask receiver: fal's webhooks, the JSON history API, /healthz and /metrics."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from fal_queue.webhooks import JWKSCache
from imagine.settings import Settings, get_settings
from models.db import get_session_factory
from webhook_receiver.dispatch import CeleryPostCommit, PostCommit
from webhook_receiver.errors import register_error_handlers
from webhook_receiver.ingest import match_orphans
from webhook_receiver.metrics import ReceiverMetrics
from webhook_receiver.state import EXTENSION, ReceiverState

__all__ = ["create_app", "match_orphans"]

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    dispatch: PostCommit | None = None,
    jwks: JWKSCache | None = None,
    sessions: sessionmaker[Session] | None = None,
    **overrides: Any,
) -> Flask:
    """A configured receiver app; `overrides` replace settings fields (tests, the CLI)."""
    from webhook_receiver.api import api
    from webhook_receiver.gallery import gallery
    from webhook_receiver.ops import ops
    from webhook_receiver.webhooks import webhooks

    settings = settings or get_settings()
    if overrides:
        settings = Settings.model_validate({**settings.model_dump(), **overrides})
    if settings.webhook_verify:
        jwks = jwks or JWKSCache(settings.fal_jwks_url)
    else:
        jwks = None
        logger.warning(
            "WEBHOOK_VERIFY=false: fal webhook signatures are NOT verified; anyone who can reach "
            "/webhooks/fal can complete or fail jobs"
        )
    sessions = sessions or get_session_factory(settings.database_url)
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.extensions[EXTENSION] = ReceiverState(
        settings=settings,
        sessions=sessions,
        jwks=jwks,
        dispatch=dispatch or CeleryPostCommit(settings.database_url),
        metrics=ReceiverMetrics(sessions),
    )
    app.register_blueprint(webhooks)
    app.register_blueprint(api)
    app.register_blueprint(ops)
    app.register_blueprint(gallery)
    register_error_handlers(app)
    return app
