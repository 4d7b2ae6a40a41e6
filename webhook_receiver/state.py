"""What every view needs from its app: settings, sessions, the key cache, the post-commit seam."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from fal_queue.webhooks import JWKSCache
from imagine.settings import Settings
from webhook_receiver.dispatch import PostCommit
from webhook_receiver.metrics import ReceiverMetrics

EXTENSION = "imagine_receiver"


@dataclass(frozen=True)
class ReceiverState:
    """One app's collaborators, built once by create_app."""

    settings: Settings
    sessions: sessionmaker[Session]
    jwks: JWKSCache | None
    dispatch: PostCommit
    metrics: ReceiverMetrics


def receiver_state() -> ReceiverState:
    """The current app's ReceiverState."""
    state = current_app.extensions[EXTENSION]
    assert isinstance(state, ReceiverState)
    return state
