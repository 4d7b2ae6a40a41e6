"""fal's webhook signature: ED25519 over request id, user id, timestamp and the body's SHA-256.

fal signs, we (and the simulator's tests) verify. The key set comes from a JWKS document whose
entries carry a base64url `x`; there is no key id in the headers, so any key that verifies wins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fal_queue.exceptions import JWKSFetchError, WebhookVerificationError

logger = logging.getLogger(__name__)

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"
SIGNATURE_HEADERS = (HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE)

DEFAULT_TOLERANCE = 300
DEFAULT_MAX_AGE = 24 * 3600.0
DEFAULT_FETCH_TIMEOUT = 5.0
DEFAULT_MIN_REFETCH_INTERVAL = 30.0


def signed_message(request_id: str, user_id: str, timestamp: str | int, body: bytes) -> bytes:
    """The exact bytes fal signs: four lines, the last the hex SHA-256 of the raw body."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([request_id, user_id, str(timestamp), digest]).encode("utf-8")


def sign_webhook(
    signing_key: SigningKey,
    request_id: str,
    user_id: str,
    body: bytes,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The four X-Fal-Webhook-* headers fal sends with `body`."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signature = signing_key.sign(signed_message(request_id, user_id, ts, body)).signature
    return {
        HEADER_REQUEST_ID: request_id,
        HEADER_USER_ID: user_id,
        HEADER_TIMESTAMP: str(ts),
        HEADER_SIGNATURE: signature.hex(),
    }


def _b64url_decode(value: str) -> bytes:
    # fal's keys are unpadded base64url; the decoder wants padding back.
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def jwk_from_verify_key(verify_key: VerifyKey, kid: str | None = None) -> dict[str, str]:
    """A JWKS entry (OKP/Ed25519, unpadded base64url `x`) for `verify_key`."""
    raw = bytes(verify_key)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": x,
        "kid": kid or hashlib.sha256(raw).hexdigest()[:16],
        "use": "sig",
        "alg": "EdDSA",
    }


def parse_jwks(doc: Any) -> list[VerifyKey]:
    """Every usable ED25519 key of a JWKS document; JWKSFetchError when there is none."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JWKSFetchError("JWKS document has no 'keys' list")
    keys: list[VerifyKey] = []
    for entry in doc["keys"]:
        if not isinstance(entry, Mapping):
            continue
        x = entry.get("x")
        if not isinstance(x, str):
            continue
        # Entries of other key types may share the set; skip them rather than fail.
        if entry.get("kty", "OKP") != "OKP" or entry.get("crv", "Ed25519") != "Ed25519":
            continue
        try:
            raw = _b64url_decode(x)
        except (binascii.Error, ValueError):
            continue
        if len(raw) != 32:
            continue
        keys.append(VerifyKey(raw))
    if not keys:
        raise JWKSFetchError("JWKS document holds no usable Ed25519 key")
    return keys


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                value = candidate
                break
    if value is None or value == "":
        raise WebhookVerificationError(f"missing header {name}")
    return value


def _checked_message(
    headers: Mapping[str, str], body: bytes, now: float | None, tolerance: int
) -> tuple[bytes, bytes]:
    """The signed message and signature of a webhook whose headers pass the cheap checks."""
    request_id, user_id, timestamp, signature_hex = (
        _header(headers, name) for name in SIGNATURE_HEADERS
    )
    try:
        ts = int(timestamp.strip())
    except ValueError:
        raise WebhookVerificationError("timestamp not integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise WebhookVerificationError("timestamp out of tolerance")
    try:
        signature = bytes.fromhex(signature_hex.strip())
    except ValueError:
        raise WebhookVerificationError("signature not hex") from None
    return signed_message(request_id, user_id, ts, body), signature


def _any_key_verifies(message: bytes, signature: bytes, keys: Sequence[VerifyKey]) -> bool:
    for key in keys:
        try:
            key.verify(message, signature)
        except (BadSignatureError, ValueError):
            continue
        return True
    return False


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[VerifyKey],
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Raise WebhookVerificationError unless `body` carries a valid fal signature."""
    message, signature = _checked_message(headers, body, now, tolerance)
    if not _any_key_verifies(message, signature, keys):
        raise WebhookVerificationError("no key verifies")


class JWKSCache:
    """fal's webhook keys, fetched lazily, kept `max_age` seconds, refetched once on a miss."""

    def __init__(
        self,
        url: str,
        http_client: httpx.Client | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        min_refetch_interval: float = DEFAULT_MIN_REFETCH_INTERVAL,
        tolerance: int = DEFAULT_TOLERANCE,
    ) -> None:
        self.url = url
        self._client = http_client
        self.max_age = max_age
        self.fetch_timeout = fetch_timeout
        self.min_refetch_interval = min_refetch_interval
        self.tolerance = tolerance
        self._lock = threading.Lock()
        self._keys: list[VerifyKey] = []
        self._fetched_at: float | None = None

    def _fetch_locked(self) -> list[VerifyKey]:
        try:
            if self._client is not None:
                response = self._client.get(self.url, timeout=self.fetch_timeout)
            else:
                response = httpx.get(self.url, timeout=self.fetch_timeout)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JWKSFetchError(f"cannot fetch JWKS from {self.url}: {exc}") from exc
        keys = parse_jwks(doc)
        self._keys = keys
        self._fetched_at = time.monotonic()
        logger.info("fetched %d webhook key(s) from %s", len(keys), self.url)
        return keys

    def keys(self) -> list[VerifyKey]:
        """The cached key set, fetched when missing or older than `max_age`."""
        with self._lock:
            if self._fetched_at is None or time.monotonic() - self._fetched_at > self.max_age:
                return list(self._fetch_locked())
            return list(self._keys)

    def refresh(self, force: bool = False) -> list[VerifyKey] | None:
        """Refetch unless the last fetch is too recent (then None); `force` skips the limit."""
        with self._lock:
            recent = (
                self._fetched_at is not None
                and time.monotonic() - self._fetched_at < self.min_refetch_interval
            )
            if recent and not force:
                return None
            return list(self._fetch_locked())

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
        """Verify a webhook, refetching the keys once (rate-limited) when none verifies."""
        message, signature = _checked_message(headers, body, now, self.tolerance)
        if _any_key_verifies(message, signature, self.keys()):
            return
        # Keys may have rotated; but a flood of forgeries must not turn into a flood of fetches.
        fresh = self.refresh()
        if fresh is not None and _any_key_verifies(message, signature, fresh):
            return
        raise WebhookVerificationError("no key verifies")
