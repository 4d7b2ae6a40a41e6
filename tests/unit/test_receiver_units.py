"""Pure pieces of the receiver and the reactions: parsing, storage hygiene, signing."""

from __future__ import annotations

import json

import pytest

from models.webhook_event import MAX_STORED_BODY
from webhook_receiver.exceptions import MalformedWebhookError
from webhook_receiver.ingest import dedupe_key, parse_webhook, stored_body
from webhook_receiver.metrics import signature_failure_reason
from worker import notify


def test_parse_webhook_keeps_what_the_receiver_uses() -> None:
    body = {"request_id": "r", "gateway_request_id": "g", "status": "OK", "payload": {"seed": 1}}
    hook = parse_webhook(json.dumps(body).encode())
    assert (hook.request_id, hook.gateway_request_id, hook.status) == ("r", "g", "OK")
    assert hook.payload == {"seed": 1}


def test_parse_webhook_makes_strings_storable() -> None:
    hook = parse_webhook(b'{"request_id": "r\\u0000", "status": "ERROR", "error": "\\ud800x"}')
    assert hook.request_id == "r\ufffd"
    assert hook.error == "?x"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff",
        b"null",
        b'{"status": "OK"}',
        b'{"request_id": "", "status": "OK"}',
        b'{"request_id": "r", "status": "DONE"}',
        b'{"request_id": "r", "status": "OK", "payload": 1}',
        json.dumps({"request_id": "r" * 101, "status": "OK"}).encode(),
        b"[" * 100_000,
    ],
)
def test_parse_webhook_refuses_other_shapes(body: bytes) -> None:
    with pytest.raises(MalformedWebhookError):
        parse_webhook(body)


def test_stored_body_is_bounded_and_nul_free() -> None:
    assert stored_body(b"a\x00b") == "a\ufffdb"
    assert len(stored_body(b"x" * (MAX_STORED_BODY + 5))) == MAX_STORED_BODY
    assert dedupe_key("r", "d") != dedupe_key("r", "e") != dedupe_key("s", "d")


def test_signature_failure_reasons_are_a_fixed_set() -> None:
    assert signature_failure_reason("missing header X-Fal-Webhook-Signature") == "missing_header"
    assert signature_failure_reason("timestamp out of tolerance") == "timestamp_out_of_tolerance"
    assert signature_failure_reason("something new") == "other"


def test_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks specification and its reference libraries.
    signature = notify.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
