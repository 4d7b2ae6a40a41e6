"""fal's ED25519 webhook signature: signing, verification, JWKS parsing and the key cache."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest
from nacl.signing import SigningKey

from fal_queue.exceptions import JWKSFetchError, WebhookVerificationError
from fal_queue.webhooks import (
    JWKSCache,
    jwk_from_verify_key,
    parse_jwks,
    sign_webhook,
    signed_message,
    verify_webhook,
)

BODY = json.dumps({"request_id": "r-1", "status": "OK", "payload": {"seed": 1}}).encode()
JWKS_URL = "https://rest.example.test/.well-known/jwks.json"


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def _headers(key: SigningKey, body: bytes = BODY, timestamp: int | None = None) -> dict[str, str]:
    return sign_webhook(key, "r-1", "user-9", body, timestamp=timestamp)


def test_signed_message_is_four_lines_with_body_digest() -> None:
    message = signed_message("r-1", "user-9", 1700000000, b"{}")
    assert message == f"r-1\nuser-9\n1700000000\n{hashlib.sha256(b'{}').hexdigest()}".encode()


def test_valid_signature_verifies(key: SigningKey) -> None:
    verify_webhook(_headers(key), BODY, [key.verify_key])


def test_header_lookup_is_case_insensitive(key: SigningKey) -> None:
    lowered = {name.lower(): value for name, value in _headers(key).items()}
    verify_webhook(lowered, BODY, [key.verify_key])


def test_tampered_body_fails(key: SigningKey) -> None:
    with pytest.raises(WebhookVerificationError, match="no key verifies"):
        verify_webhook(_headers(key), BODY + b" ", [key.verify_key])


@pytest.mark.parametrize(
    "header", ["X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp"]
)
def test_tampered_header_fails(key: SigningKey, header: str) -> None:
    headers = _headers(key)
    headers[header] = "other" if header != "X-Fal-Webhook-Timestamp" else str(int(time.time()) - 1)
    with pytest.raises(WebhookVerificationError, match="no key verifies"):
        verify_webhook(headers, BODY, [key.verify_key])


def test_wrong_key_fails(key: SigningKey) -> None:
    with pytest.raises(WebhookVerificationError, match="no key verifies"):
        verify_webhook(_headers(key), BODY, [SigningKey.generate().verify_key])


def test_any_of_several_keys_verifies(key: SigningKey) -> None:
    verify_webhook(_headers(key), BODY, [SigningKey.generate().verify_key, key.verify_key])


@pytest.mark.parametrize(
    "header",
    [
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    ],
)
def test_missing_header_fails(key: SigningKey, header: str) -> None:
    headers = _headers(key)
    del headers[header]
    with pytest.raises(WebhookVerificationError, match=f"missing header {header}"):
        verify_webhook(headers, BODY, [key.verify_key])


def test_non_integer_timestamp_fails(key: SigningKey) -> None:
    headers = _headers(key)
    headers["X-Fal-Webhook-Timestamp"] = "12.5"
    with pytest.raises(WebhookVerificationError, match="timestamp not integer"):
        verify_webhook(headers, BODY, [key.verify_key])


def test_non_hex_signature_fails(key: SigningKey) -> None:
    headers = _headers(key)
    headers["X-Fal-Webhook-Signature"] = "zz" * 64
    with pytest.raises(WebhookVerificationError, match="signature not hex"):
        verify_webhook(headers, BODY, [key.verify_key])


@pytest.mark.parametrize("offset", [-301, 301])
def test_timestamp_outside_tolerance_fails(key: SigningKey, offset: int) -> None:
    now = 1_700_000_000
    headers = _headers(key, timestamp=now + offset)
    with pytest.raises(WebhookVerificationError, match="timestamp out of tolerance"):
        verify_webhook(headers, BODY, [key.verify_key], now=now)


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_at_tolerance_edge_passes(key: SigningKey, offset: int) -> None:
    now = 1_700_000_000
    verify_webhook(_headers(key, timestamp=now + offset), BODY, [key.verify_key], now=now)


def test_jwk_round_trip_with_unpadded_x(key: SigningKey) -> None:
    jwk = jwk_from_verify_key(key.verify_key)
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519"
    assert not jwk["x"].endswith("=") and len(jwk["x"]) == 43
    assert [bytes(k) for k in parse_jwks({"keys": [jwk]})] == [bytes(key.verify_key)]


def test_parse_jwks_skips_bad_entries(key: SigningKey) -> None:
    good = jwk_from_verify_key(key.verify_key)
    junk = ["junk", {"kty": "RSA", "n": "x"}, {"kty": "OKP", "x": "!!"}, {"x": "AAAA"}]
    doc = {"keys": [*junk, good]}
    assert [bytes(k) for k in parse_jwks(doc)] == [bytes(key.verify_key)]


@pytest.mark.parametrize("doc", [{}, {"keys": []}, {"keys": [{"x": "AAAA"}]}, [], "x"])
def test_parse_jwks_without_usable_key_raises(doc: object) -> None:
    with pytest.raises(JWKSFetchError):
        parse_jwks(doc)


class _JWKSServer:
    """A MockTransport handler serving a key set that the test can rotate."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.status != 200:
            return httpx.Response(self.status)
        return httpx.Response(
            200, json={"keys": [jwk_from_verify_key(k.verify_key) for k in self.keys]}
        )

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def test_cache_fetches_once_and_reuses(key: SigningKey) -> None:
    server = _JWKSServer(key)
    cache = JWKSCache(JWKS_URL, http_client=server.client())
    for _ in range(3):
        cache.verify(_headers(key), BODY)
    assert server.fetches == 1


def test_cache_refetches_once_when_key_rotated(key: SigningKey) -> None:
    old = SigningKey.generate()
    server = _JWKSServer(old)
    cache = JWKSCache(JWKS_URL, http_client=server.client(), min_refetch_interval=0)
    cache.keys()
    server.keys = [key]
    cache.verify(_headers(key), BODY)
    assert server.fetches == 2


def test_cache_refetch_is_rate_limited(key: SigningKey) -> None:
    server = _JWKSServer(key)
    cache = JWKSCache(JWKS_URL, http_client=server.client(), min_refetch_interval=30)
    forger = SigningKey.generate()
    for _ in range(5):
        with pytest.raises(WebhookVerificationError, match="no key verifies"):
            cache.verify(_headers(forger), BODY)
    assert server.fetches == 1


def test_cache_miss_refetches_exactly_once(key: SigningKey) -> None:
    server = _JWKSServer(key)
    cache = JWKSCache(JWKS_URL, http_client=server.client(), min_refetch_interval=0)
    with pytest.raises(WebhookVerificationError):
        cache.verify(_headers(SigningKey.generate()), BODY)
    assert server.fetches == 2


def test_cache_does_not_fetch_for_malformed_headers(key: SigningKey) -> None:
    server = _JWKSServer(key)
    cache = JWKSCache(JWKS_URL, http_client=server.client())
    with pytest.raises(WebhookVerificationError, match="missing header"):
        cache.verify({}, BODY)
    assert server.fetches == 0


def test_cache_expires_after_max_age(key: SigningKey) -> None:
    server = _JWKSServer(key)
    cache = JWKSCache(JWKS_URL, http_client=server.client(), max_age=0)
    cache.keys()
    cache.keys()
    assert server.fetches == 2


def test_cache_fetch_error_is_jwks_fetch_error(key: SigningKey) -> None:
    server = _JWKSServer(key)
    server.status = 503
    cache = JWKSCache(JWKS_URL, http_client=server.client())
    with pytest.raises(JWKSFetchError):
        cache.keys()
