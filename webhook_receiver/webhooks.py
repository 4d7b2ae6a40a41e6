"""POST /webhooks/fal: verify, record, apply, answer fast."""

from __future__ import annotations

from typing import NoReturn

from flask import Blueprint, Response, jsonify, request

from fal_queue.exceptions import JWKSFetchError, WebhookVerificationError
from fal_queue.webhooks import HEADER_REQUEST_ID
from models import SignatureOutcome
from webhook_receiver.dispatch import run_post_commit
from webhook_receiver.exceptions import (
    InvalidSignatureError,
    MalformedWebhookError,
    PayloadTooLargeError,
    ReceiverError,
    ServiceUnavailableError,
)
from webhook_receiver.ingest import ingest, parse_webhook, record_rejected
from webhook_receiver.metrics import signature_failure_reason
from webhook_receiver.state import ReceiverState, receiver_state

webhooks = Blueprint("webhooks", __name__)

READ_CHUNK = 64 * 1024


def read_body(limit: int) -> bytes:
    """The raw body, or PayloadTooLargeError as soon as it is known to exceed `limit` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    # Content-Length may be absent (chunked) or lie: never read more than limit + 1 bytes.
    while size <= limit:
        chunk = request.stream.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise PayloadTooLargeError(f"body exceeds the {limit}-byte limit")
    return b"".join(chunks)


def _reject(
    state: ReceiverState,
    exc: ReceiverError,
    *,
    body: bytes,
    signature: SignatureOutcome,
    reason: str,
) -> NoReturn:
    """Record a refused delivery, count it, and raise the error that answers it."""
    with state.sessions() as session, session.begin():
        record_rejected(
            session,
            body=body,
            signature=signature,
            detail=f"{exc.code}: {exc.message}",
            request_id=request.headers.get(HEADER_REQUEST_ID),
            job_id_param=request.args.get("job_id"),
        )
    state.metrics.deliveries.labels("rejected").inc()
    state.metrics.rejections.labels(reason).inc()
    raise exc


@webhooks.post("/webhooks/fal")
def fal_webhook() -> tuple[Response, int]:
    """Receive one fal webhook delivery."""
    state = receiver_state()
    with state.metrics.ingest_seconds.time():
        return _receive(state)


def _receive(state: ReceiverState) -> tuple[Response, int]:
    try:
        body = read_body(state.settings.webhook_max_body_bytes)
    except PayloadTooLargeError as exc:
        # Not verified: the signature covers bytes we refuse to read.
        _reject(state, exc, body=b"", signature=SignatureOutcome.SKIPPED, reason="too_large")
    signature = SignatureOutcome.SKIPPED
    if state.jwks is not None:
        signature = SignatureOutcome.INVALID
        try:
            state.jwks.verify(dict(request.headers.items()), body)
        except WebhookVerificationError as exc:
            state.metrics.signature_failures.labels(signature_failure_reason(str(exc))).inc()
            error = InvalidSignatureError(f"signature rejected: {exc}")
            _reject(state, error, body=body, signature=signature, reason="signature")
        except JWKSFetchError:
            unavailable = ServiceUnavailableError("webhook signing keys unavailable, retry later")
            _reject(state, unavailable, body=body, signature=signature, reason="keys_unavailable")
        signature = SignatureOutcome.VALID
    try:
        webhook = parse_webhook(body)
    except MalformedWebhookError as exc:
        _reject(state, exc, body=body, signature=signature, reason="malformed")
    job_id_param = request.args.get("job_id")
    with state.sessions() as session, session.begin():
        result = ingest(session, webhook, body, signature=signature, job_id_param=job_id_param)
    run_post_commit(state.dispatch, result.finished, result.fetch)
    state.metrics.deliveries.labels(result.outcome.value).inc()
    answer = {
        "outcome": result.outcome.value,
        "job_id": str(result.job_id) if result.job_id else None,
    }
    return jsonify(answer), 200
