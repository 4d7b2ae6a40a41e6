"""SQLAlchemy models, the job state machine and the queries built on them."""

from models.attempt import JobAttempt
from models.base import Base, utcnow
from models.batch import Batch
from models.enums import (
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    AspectRatio,
    AttemptOutcome,
    JobStatus,
    Reasoning,
    Resolution,
    SignatureOutcome,
    WebhookOutcome,
)
from models.image import Image
from models.job import Job, prompt_hash
from models.notification import NotificationDelivery, NotificationEvent, NotificationOutcome
from models.webhook_event import WebhookEvent

__all__ = [
    "IN_FLIGHT_STATES",
    "TERMINAL_STATES",
    "AspectRatio",
    "AttemptOutcome",
    "Base",
    "Batch",
    "Image",
    "Job",
    "JobAttempt",
    "JobStatus",
    "NotificationDelivery",
    "NotificationEvent",
    "NotificationOutcome",
    "Reasoning",
    "Resolution",
    "SignatureOutcome",
    "WebhookEvent",
    "WebhookOutcome",
    "prompt_hash",
    "utcnow",
]
