"""Errors of the receiver; each carries the HTTP status it maps to at the edge."""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every error raised by `webhook_receiver`; `status_code` is its HTTP answer."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Itemised problems (say, one per invalid prompt row) for the JSON answer.
        self.errors = errors


class BadRequestError(ReceiverError):
    """The request is malformed: a bad parameter, body or JSON shape."""

    status_code = 400
    code = "bad_request"


class MalformedWebhookError(BadRequestError):
    """A webhook body that is not JSON or not the shape fal sends."""

    code = "malformed_webhook"


class UnauthorizedError(ReceiverError):
    """Missing or wrong credentials (the API token)."""

    status_code = 401
    code = "unauthorized"


class InvalidSignatureError(UnauthorizedError):
    """A webhook whose fal signature is missing or does not verify."""

    code = "invalid_signature"


class NotFoundError(ReceiverError):
    """The batch, job or image does not exist (or has no archived file)."""

    status_code = 404
    code = "not_found"


class ConflictError(ReceiverError):
    """The request is valid but the resource's state forbids it."""

    status_code = 409
    code = "conflict"


class PayloadTooLargeError(ReceiverError):
    """A body over the configured limit."""

    status_code = 413
    code = "payload_too_large"


class ServiceUnavailableError(ReceiverError):
    """A dependency (database, key set, broker) is down; the sender should retry later."""

    status_code = 503
    code = "unavailable"
