"""POST /webhooks/fal on both databases: signatures, idempotency, matching, orphans, limits."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from fal_queue.webhooks import HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP
from models import Image, Job, JobStatus, SignatureOutcome, WebhookOutcome
from models.webhook_event import MAX_STORED_BODY
from tests.fixtures.receiver import Receiver, RecordingDispatch, add_job, ok_body
from webhook_receiver import match_orphans

S = JobStatus
W = WebhookOutcome


@pytest.fixture
def rx(make_receiver: Callable[..., Receiver], database_url: str) -> Receiver:
    return make_receiver(database_url)


def snapshot(rx: Receiver, job_id: uuid.UUID) -> dict[str, Any]:
    """Every column of a job, plus its image count: 'nothing changed' made checkable."""
    job = rx.job(job_id)
    row = {c.key: getattr(job, c.key) for c in Job.__table__.columns}
    with rx.sessions() as session:
        row["images"] = session.scalar(
            select(func.count()).select_from(Image).where(Image.job_id == job_id)
        )
    return row


def outcome_of(response: TestResponse) -> str:
    body = response.get_json()
    assert isinstance(body, dict), response.status_code
    return str(body["outcome"])


def image_count(rx: Receiver, job_id: uuid.UUID) -> int:
    with rx.sessions() as session:
        return int(
            session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id))
            or 0
        )


def test_valid_ok_webhook_completes_the_job(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, request_id="req-1")
    response = rx.deliver(ok_body("req-1", seed=99, images=2), "req-1", job_id=job_id)
    assert response.status_code == 200
    assert response.json == {"outcome": "applied", "job_id": str(job_id)}
    job = rx.job(job_id)
    assert job.status is S.COMPLETED
    assert job.returned_seed == 99
    assert job.gateway_request_id == "req-1"
    assert job.webhook_received_at is not None
    assert image_count(rx, job_id) == 2
    (event,) = rx.events()
    assert event.outcome is W.APPLIED
    assert event.signature is SignatureOutcome.VALID
    assert event.job_id == job_id and event.dedupe_key is not None
    assert rx.dispatch.finished == [job_id] and rx.dispatch.fetched == []


def test_error_webhook_fails_the_job_with_fals_error(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, request_id="req-e")
    detail = [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]
    body = json.dumps(
        {
            "request_id": "req-e",
            "gateway_request_id": "gw-e",
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": detail},
        }
    ).encode()
    assert rx.deliver(body, "req-e").json == {"outcome": "applied", "job_id": str(job_id)}
    job = rx.job(job_id)
    assert job.status is S.FAILED
    assert (job.error_type, job.error_message) == ("content_policy_violation", "prompt: flagged")
    assert job.gateway_request_id == "gw-e"
    assert rx.dispatch.finished == [job_id]


def test_webhook_before_the_request_id_is_stored_matches_by_job_id(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, status=S.SUBMITTING)
    assert outcome_of(rx.deliver(ok_body("req-early"), "req-early", job_id=job_id)) == "applied"
    job = rx.job(job_id)
    assert job.status is S.COMPLETED and job.fal_request_id == "req-early"


def _tamper_body(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body.replace(b'"seed": 42', b'"seed": 43'), rx.signed(body, "req-t")


def _tamper_request_id(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {**rx.signed(body, "req-t"), HEADER_REQUEST_ID: "req-other"}


def _tamper_user_id(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {**rx.signed(body, "req-t"), "X-Fal-Webhook-User-Id": "someone-else"}


def _tamper_timestamp(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = rx.signed(body, "req-t")
    return body, {**headers, HEADER_TIMESTAMP: str(int(headers[HEADER_TIMESTAMP]) - 1)}


def _tamper_signature(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = rx.signed(body, "req-t")
    flipped = "0" if headers[HEADER_SIGNATURE][0] != "0" else "1"
    return body, {**headers, HEADER_SIGNATURE: flipped + headers[HEADER_SIGNATURE][1:]}


def _wrong_key(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, rx.signed(body, "req-t", key=SigningKey.generate())


def _old(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, rx.signed(body, "req-t", timestamp=int(time.time()) - 301)


def _ahead(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, rx.signed(body, "req-t", timestamp=int(time.time()) + 301)


def _without(header: str) -> Callable[[Receiver, bytes], tuple[bytes, dict[str, str]]]:
    def build(rx: Receiver, body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = rx.signed(body, "req-t")
        del headers[header]
        return body, headers

    return build


FORGERIES = {
    "tampered-body": _tamper_body,
    "tampered-request-id": _tamper_request_id,
    "tampered-user-id": _tamper_user_id,
    "tampered-timestamp": _tamper_timestamp,
    "tampered-signature": _tamper_signature,
    "wrong-key": _wrong_key,
    "301s-old": _old,
    "301s-ahead": _ahead,
    "missing-request-id": _without("X-Fal-Webhook-Request-Id"),
    "missing-user-id": _without("X-Fal-Webhook-User-Id"),
    "missing-timestamp": _without("X-Fal-Webhook-Timestamp"),
    "missing-signature": _without("X-Fal-Webhook-Signature"),
    "no-headers-at-all": lambda rx, body: (body, {}),
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_webhooks_get_401_and_change_nothing(
    rx: Receiver, forge: Callable[[Receiver, bytes], tuple[bytes, dict[str, str]]]
) -> None:
    job_id = add_job(rx.sessions, request_id="req-t")
    before = snapshot(rx, job_id)
    body, headers = forge(rx, ok_body("req-t"))
    response = rx.post(body, headers, job_id=job_id)
    assert response.status_code == 401
    assert response.json is not None and response.json["error"] == "invalid_signature"
    assert snapshot(rx, job_id) == before
    (event,) = rx.events()
    assert event.outcome is W.REJECTED
    assert event.signature is SignatureOutcome.INVALID
    assert event.job_id is None and event.dedupe_key is None
    assert event.detail is not None and event.detail.startswith("invalid_signature")
    assert rx.dispatch == RecordingDispatch()


def test_repeated_delivery_is_a_duplicate_and_changes_nothing(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, request_id="req-d")
    body = ok_body("req-d")
    assert outcome_of(rx.deliver(body, "req-d")) == "applied"
    after_first = snapshot(rx, job_id)
    second = rx.deliver(body, "req-d")
    assert second.status_code == 200 and outcome_of(second) == "duplicate"
    assert snapshot(rx, job_id) == after_first
    first, dup = rx.events()
    assert (first.outcome, dup.outcome) == (W.APPLIED, W.DUPLICATE)
    assert dup.dedupe_key is None and dup.body_sha256 == first.body_sha256
    assert rx.dispatch.finished == [job_id]


def test_terminal_job_absorbs_a_late_webhook(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, status=S.CANCELLED, request_id="req-late")
    before = snapshot(rx, job_id)
    response = rx.deliver(ok_body("req-late"), "req-late")
    assert response.json == {"outcome": "duplicate", "job_id": str(job_id)}
    after = snapshot(rx, job_id)
    assert after.pop("webhook_received_at") is not None
    before.pop("webhook_received_at")
    assert after == before
    assert rx.dispatch.finished == []


def test_error_of_an_older_attempt_is_stale(rx: Receiver) -> None:
    from models import JobAttempt

    job_id = add_job(rx.sessions, request_id="req-new")
    with rx.sessions() as session, session.begin():
        session.add(JobAttempt(job_id=job_id, number=1, fal_request_id="req-old"))
    body = json.dumps({"request_id": "req-old", "status": "ERROR", "payload": None}).encode()
    assert outcome_of(rx.deliver(body, "req-old")) == "stale"
    assert rx.job(job_id).status is S.SUBMITTED


def test_null_payload_schedules_a_fetch_after_commit(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, request_id="req-n")
    body = json.dumps(
        {"request_id": "req-n", "status": "OK", "payload": None, "payload_error": "not JSON"}
    ).encode()
    assert rx.deliver(body, "req-n").json == {"outcome": "fetch_scheduled", "job_id": str(job_id)}
    assert rx.dispatch.fetched == [job_id] and rx.dispatch.finished == []
    job = rx.job(job_id)
    assert job.status is S.SUBMITTED and job.webhook_received_at is not None


def test_orphan_is_kept_answered_200_and_matched_later(rx: Receiver, database_url: str) -> None:
    response = rx.deliver(ok_body("req-o", seed=5), "req-o")
    assert response.status_code == 200 and response.json == {"outcome": "orphan", "job_id": None}
    (orphan,) = rx.events()
    assert orphan.outcome is W.ORPHAN and orphan.job_id is None
    dispatch = RecordingDispatch()
    assert match_orphans(database_url=database_url, dispatch=dispatch) == 0
    job_id = add_job(rx.sessions, request_id="req-o")
    assert match_orphans(database_url=database_url, dispatch=dispatch) == 1
    job = rx.job(job_id)
    assert job.status is S.COMPLETED and job.returned_seed == 5
    assert image_count(rx, job_id) == 1
    (event,) = rx.events()
    assert event.outcome is W.APPLIED and event.job_id == job_id
    assert event.detail is not None and event.detail.startswith("matched later")
    assert dispatch.finished == [job_id]
    assert match_orphans(database_url=database_url, dispatch=dispatch) == 0


def test_orphan_whose_stored_body_was_cut_is_fetched(rx: Receiver, database_url: str) -> None:
    body = ok_body("req-big", padding="x" * (MAX_STORED_BODY + 10))
    assert outcome_of(rx.deliver(body, "req-big")) == "orphan"
    job_id = add_job(rx.sessions, request_id="req-big")
    dispatch = RecordingDispatch()
    assert match_orphans(database_url=database_url, dispatch=dispatch) == 1
    assert dispatch.fetched == [job_id]
    assert rx.events()[0].outcome is W.FETCH_SCHEDULED


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"status": "OK", "payload": null}',
        b'{"request_id": "r", "status": "COMPLETED"}',
        b'{"request_id": "r", "status": "OK", "payload": [1]}',
        b'{"request_id": 7, "status": "OK"}',
    ],
)
def test_malformed_signed_bodies_get_400_and_are_recorded(rx: Receiver, body: bytes) -> None:
    response = rx.post(body, rx.signed(body, "r"))
    assert response.status_code == 400
    (event,) = rx.events()
    assert event.outcome is W.REJECTED and event.signature is SignatureOutcome.VALID


def test_body_over_the_limit_gets_413_before_verification(
    make_receiver: Callable[..., Receiver], database_url: str
) -> None:
    rx = make_receiver(database_url, webhook_max_body_bytes=1000)
    job_id = add_job(rx.sessions, request_id="req-big")
    body = ok_body("req-big", padding="x" * 2000)
    response = rx.deliver(body, "req-big")
    assert response.status_code == 413
    assert rx.job(job_id).status is S.SUBMITTED
    (event,) = rx.events()
    assert event.outcome is W.REJECTED and event.body is None
    assert rx.jwks.fetches == 0


def test_verification_off_warns_at_start_and_applies_unsigned(
    make_receiver: Callable[..., Receiver], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="webhook_receiver"):
        rx = make_receiver(database_url, webhook_verify=False)
    assert any("WEBHOOK_VERIFY=false" in r.getMessage() for r in caplog.records)
    job_id = add_job(rx.sessions, request_id="req-u")
    assert outcome_of(rx.post(ok_body("req-u"))) == "applied"
    assert rx.events()[0].signature is SignatureOutcome.SKIPPED
    assert rx.job(job_id).status is S.COMPLETED


def test_unreachable_key_set_answers_503_so_fal_retries(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, request_id="req-k")
    rx.jwks.keys.clear()  # the endpoint now serves an empty, unusable key set
    response = rx.deliver(ok_body("req-k"), "req-k")
    assert response.status_code == 503
    assert rx.job(job_id).status is S.SUBMITTED
    assert rx.events()[0].outcome is W.REJECTED


def test_keys_are_fetched_once_and_a_miss_does_not_refetch_at_once(rx: Receiver) -> None:
    for n in range(3):
        add_job(rx.sessions, request_id=f"req-{n}")
        assert rx.deliver(ok_body(f"req-{n}"), f"req-{n}").status_code == 200
    assert rx.jwks.fetches == 1
    rotated = SigningKey.generate()
    rx.jwks.keys.append(rotated)
    add_job(rx.sessions, request_id="req-r")
    body = ok_body("req-r")
    # Within the refetch interval a miss is not refetched (forgeries must not cause fetches).
    assert rx.post(body, rx.signed(body, "req-r", key=rotated)).status_code == 401
    assert rx.jwks.fetches == 1


def test_metrics_count_deliveries_and_jobs_by_state(rx: Receiver) -> None:
    add_job(rx.sessions, request_id="req-m")
    rx.deliver(ok_body("req-m"), "req-m")
    rx.deliver(ok_body("req-m"), "req-m")
    rx.post(ok_body("req-m"), {})
    text = rx.client.get("/metrics").get_data(as_text=True)
    assert 'imagine_webhook_deliveries_total{outcome="applied"} 1.0' in text
    assert 'imagine_webhook_deliveries_total{outcome="duplicate"} 1.0' in text
    assert 'imagine_webhook_deliveries_total{outcome="rejected"} 1.0' in text
    assert 'imagine_webhook_signature_failures_total{reason="missing_header"} 1.0' in text
    assert "imagine_webhook_ingest_seconds_count 3.0" in text
    assert 'imagine_jobs{state="COMPLETED"} 1.0' in text
    assert 'imagine_jobs{state="QUEUED"} 0.0' in text


def test_unknown_routes_and_methods_answer_json(rx: Receiver) -> None:
    assert rx.client.get("/webhooks/fal").status_code == 405
    missing = rx.client.get("/nope")
    assert missing.status_code == 404 and missing.json is not None
