"""A typed, pooled, thread-safe httpx client for fal's queue API (submit, status, result, cancel).

Retry policy lives with the caller; this module only decides what kind of failure happened:

- transport failures (connect, read, timeouts, pool exhaustion) raise `FalTransportError`;
- 408, 409, 429 and every 5xx raise `FalRetryableError` (429: `FalRateLimitedError`); so does 499
  (`client_disconnected`: the connection between fal's gateway and the runner dropped), except
  499 `client_cancelled`, which is `FalPermanentError` because retrying would undo a cancel;
- 401 and 403 from the queue raise `FalAccountError` (bad key, locked or exhausted account);
- 422 and every other 4xx raise `FalPermanentError`;
- a 2xx whose body breaks the protocol raises `FalMalformedResponseError`, which is retryable: a
  proxy or load balancer glitch is far more likely than fal changing its API under us.

The key is sent only to the queue (never to media hosts) and never appears in reprs, exception
messages or logs.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from fal_queue.exceptions import (
    FalAccountError,
    FalAPIError,
    FalDownloadTooLargeError,
    FalMalformedResponseError,
    FalPermanentError,
    FalRateLimitedError,
    FalRetryableError,
    FalTransportError,
)
from fal_queue.types import (
    CancelOutcome,
    DownloadResult,
    QueueStatus,
    RequestStatus,
    SubmitResult,
)
from fal_queue.urls import submit_url, with_suffix

logger = logging.getLogger("fal_queue.client")

DEFAULT_BASE_URL = "https://queue.fal.run"
DEFAULT_USER_AGENT = "imagine-batch-fal-queue/0.1"
MAX_MESSAGE_CHARS = 500
MAX_ERROR_BODY_BYTES = 64 * 1024
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 64 * 1024
RETRYABLE_STATUSES = frozenset({408, 409, 429, 499})
ACCOUNT_STATUSES = frozenset({401, 403})
# A reset header this large is a Unix timestamp, not a number of seconds.
_EPOCH_THRESHOLD = 1_000_000_000

Priority = Literal["normal", "low"]


class _Secret:
    """Holds the key so that no repr, vars() dump or log line can show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "_Secret('***')"

    @property
    def parts(self) -> tuple[str, ...]:
        """The whole key and its secret half: both must be redacted wherever they appear."""
        return tuple(p for p in (self.value, self.value.partition(":")[2]) if p)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _redact_value(value: object, secrets: tuple[str, ...]) -> object:
    if not secrets:
        return value
    if isinstance(value, str):
        return _redact(value, secrets)
    if isinstance(value, list):
        return [_redact_value(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: _redact_value(item, secrets) for key, item in value.items()}
    return value


def _bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or date) or `x-ratelimit-reset`; longer wins."""
    now = time.time() if now is None else now
    waits: list[float] = []
    retry_after = headers.get("retry-after")
    if retry_after:
        seconds = _seconds(retry_after)
        if seconds is None:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - now
        if seconds is not None:
            waits.append(seconds)
    reset = headers.get("x-ratelimit-reset")
    if reset:
        seconds = _seconds(reset)
        if seconds is not None:
            # fal documents seconds; some gateways send an epoch instead: accept both.
            waits.append(seconds - now if seconds > _EPOCH_THRESHOLD else seconds)
    return max(0.0, *waits) if waits else None


def detail_message(detail: object) -> str | None:
    """A one-line, bounded message from fal's `detail` (a string or the validation list form)."""
    if detail is None:
        return None
    if isinstance(detail, str):
        text = detail
    elif isinstance(detail, list):
        parts = []
        for entry in detail:
            if isinstance(entry, dict):
                loc = entry.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else str(loc or "")
                msg = str(entry.get("msg", ""))
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(entry))
        text = "; ".join(part for part in parts if part)
    else:
        text = json.dumps(detail, default=str)
    text = _bounded(text)
    return text or None


def map_error(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    media: bool = False,
    secrets: Iterable[str] = (),
) -> FalAPIError:
    """The exception for a non-2xx answer; `media=True` for CDN downloads (401/403 permanent)."""
    secrets = tuple(s for s in secrets if s)
    payload: object = None
    with contextlib.suppress(ValueError):
        payload = json.loads(body) if body else None
    detail: object = None
    error_type = headers.get("x-fal-error-type") or None
    if isinstance(payload, dict):
        detail = _redact_value(payload.get("detail"), secrets)
        body_type = payload.get("error_type")
        if error_type is None and isinstance(body_type, str) and body_type:
            error_type = body_type
    message = detail_message(detail)
    if message is None and isinstance(payload, dict):
        for key in ("error", "message", "status"):
            if isinstance(payload.get(key), str) and payload[key]:
                message = _bounded(payload[key])
                break
    if message is None:
        snippet = _bounded(body[:MAX_MESSAGE_CHARS].decode("utf-8", "replace"), 200)
        message = f"HTTP {status_code} from fal" + (f": {snippet}" if snippet else "")
    message = _redact(message, secrets)
    kwargs: dict[str, Any] = {
        "status_code": status_code,
        "error_type": error_type,
        "detail": detail,
        "retry_after": parse_retry_after(headers),
    }
    if status_code == 429:
        return FalRateLimitedError(message, **kwargs)
    if status_code == 499 and error_type == "client_cancelled":
        return FalPermanentError(message, **kwargs)
    if status_code in RETRYABLE_STATUSES or 500 <= status_code <= 599:
        return FalRetryableError(message, **kwargs)
    if status_code in ACCOUNT_STATUSES and not media:
        return FalAccountError(message, **kwargs)
    if 400 <= status_code <= 499:
        return FalPermanentError(message, **kwargs)
    # 1xx/3xx are not part of the protocol: most likely a misbehaving proxy in between.
    return FalMalformedResponseError(message, **kwargs)


def _malformed(response: httpx.Response, what: str) -> FalMalformedResponseError:
    return FalMalformedResponseError(
        f"malformed fal answer to {response.request.method} {response.request.url.path}: {what}",
        status_code=response.status_code,
        error_type="malformed_response",
    )


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        raise _malformed(response, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise _malformed(response, "body is not a JSON object")
    return payload


def _optional_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _format_seconds(seconds: float) -> str:
    if seconds <= 0 or not math.isfinite(seconds):
        raise ValueError("start_timeout must be a positive number of seconds")
    return f"{seconds:f}".rstrip("0").rstrip(".")


class FalQueueClient:
    """One pooled, thread-safe connection to fal's queue API; share an instance across threads."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        max_connections: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = _Secret(key) if key else None
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        key = "'***'" if self._key else "None"
        return f"FalQueueClient(base_url={self.base_url!r}, key={key})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _secrets(self) -> tuple[str, ...]:
        return self._key.parts if self._key else ()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Key {self._key.value}"} if self._key else {}

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = self._client.send(request, stream=stream)
        except httpx.RequestError as exc:
            elapsed = time.perf_counter() - started
            logger.debug(
                "%s %s failed after %.3fs: %s",
                request.method,
                request.url.path,
                elapsed,
                type(exc).__name__,
            )
            message = _bounded(
                _redact(
                    f"{type(exc).__name__} on {request.method} {request.url.path}: {exc}",
                    self._secrets(),
                )
            )
            raise FalTransportError(message) from exc
        logger.debug(
            "%s %s -> %d in %.3fs",
            request.method,
            request.url.path,
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        merged = {**(headers or {}), **self._auth()}
        request = self._client.build_request(
            method, url, params=params, json=json_body, headers=merged
        )
        return self._send(request)

    def _error(self, response: httpx.Response, *, media: bool = False) -> FalAPIError:
        return map_error(
            response.status_code,
            response.headers,
            response.content,
            media=media,
            secrets=self._secrets(),
        )

    def submit(
        self,
        endpoint_id: str,
        arguments: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        priority: Priority | None = None,
        start_timeout: float | None = None,
        max_queue_length: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> SubmitResult:
        """Queue one request at fal; `webhook_url` is sent as the `fal_webhook` query parameter."""
        params: dict[str, str] = {}
        if webhook_url:
            params["fal_webhook"] = webhook_url
        if max_queue_length is not None:
            params["fal_max_queue_length"] = str(max_queue_length)
        headers = dict(extra_headers or {})
        if priority is not None:
            headers["X-Fal-Queue-Priority"] = priority
        if start_timeout is not None:
            headers["X-Fal-Request-Timeout"] = _format_seconds(start_timeout)
        response = self._call(
            "POST",
            submit_url(self.base_url, endpoint_id),
            params=params,
            json_body=dict(arguments),
            headers=headers,
        )
        if not response.is_success:
            raise self._error(response)
        payload = _json_object(response)
        fields = {}
        for name in ("request_id", "response_url", "status_url", "cancel_url"):
            value = payload.get(name)
            if not isinstance(value, str) or not value:
                raise _malformed(response, f"missing {name}")
            fields[name] = value
        return SubmitResult(
            **fields,
            queue_position=_optional_int(payload.get("queue_position")),
            gateway_request_id=_optional_str(payload.get("gateway_request_id")),
        )

    def status(self, url: str, logs: bool = False) -> QueueStatus:
        """Poll a request given its status URL (or response URL); 200 and 202 are both answers."""
        response = self._call(
            "GET", with_suffix(url, "status"), params={"logs": "1" if logs else "0"}
        )
        if not response.is_success:
            raise self._error(response)
        payload = _json_object(response)
        try:
            state = RequestStatus(str(payload.get("status")))
        except ValueError:
            raise _malformed(response, "unknown or missing status") from None
        raw_logs = payload.get("logs")
        metrics = payload.get("metrics")
        return QueueStatus(
            status=state,
            request_id=_optional_str(payload.get("request_id")),
            response_url=_optional_str(payload.get("response_url")),
            queue_position=_optional_int(payload.get("queue_position")),
            logs=[e for e in raw_logs if isinstance(e, dict)] if isinstance(raw_logs, list) else [],
            metrics=metrics if isinstance(metrics, dict) else {},
            error=_optional_str(payload.get("error")),
            error_type=_optional_str(payload.get("error_type")),
        )

    def result(self, response_url: str) -> dict[str, Any]:
        """The model output of a completed request; a failed one raises its mapped error.

        After a COMPLETED status that carried `error`, a retryable class here still means the
        request itself is over: fal answers the same way on every fetch, so resubmit instead.
        """
        response = self._call("GET", with_suffix(response_url, ""))
        if not response.is_success:
            raise self._error(response)
        return _json_object(response)

    def cancel(self, cancel_url: str) -> CancelOutcome:
        """Ask fal to cancel a request (given its cancel URL or response URL)."""
        response = self._call("PUT", with_suffix(cancel_url, "cancel"))
        if response.is_success:
            return CancelOutcome.CANCELLATION_REQUESTED
        if response.status_code in (400, 404):
            body_status: object = None
            with contextlib.suppress(ValueError):
                payload = response.json()
                body_status = payload.get("status") if isinstance(payload, dict) else None
            if response.status_code == 400 and body_status == CancelOutcome.ALREADY_COMPLETED:
                return CancelOutcome.ALREADY_COMPLETED
            # A 404 means the queue does not know the request, whatever the body says.
            if response.status_code == 404:
                return CancelOutcome.NOT_FOUND
        raise self._error(response)

    def download(
        self,
        url: str,
        dest_path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> DownloadResult:
        """Stream a public media file to `dest_path` (temp file, atomic rename), without auth."""
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Media URLs are public: no Authorization header, the key never reaches a CDN.
        request = self._client.build_request("GET", url, headers={"Accept": "*/*"})
        started = time.perf_counter()
        try:
            response = self._client.send(request, stream=True, follow_redirects=True)
        except httpx.RequestError as exc:
            raise FalTransportError(
                _bounded(f"{type(exc).__name__} downloading {request.url.path}: {exc}")
            ) from exc
        try:
            if not response.is_success:
                logger.debug("GET %s -> %d", request.url.path, response.status_code)
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) >= MAX_ERROR_BODY_BYTES:
                        break
                raise map_error(
                    response.status_code,
                    response.headers,
                    body,
                    media=True,
                    secrets=self._secrets(),
                )
            declared = _optional_int(response.headers.get("content-length"))
            if declared is not None and declared > max_bytes:
                raise self._too_large(response, declared, max_bytes)
            written, digest = self._write_atomically(response, dest, max_bytes, chunk_size)
        except httpx.RequestError as exc:
            raise FalTransportError(
                _bounded(f"{type(exc).__name__} downloading {request.url.path}: {exc}")
            ) from exc
        finally:
            response.close()
        logger.debug(
            "GET %s -> %d, %d bytes in %.3fs",
            request.url.path,
            response.status_code,
            written,
            time.perf_counter() - started,
        )
        return DownloadResult(response.headers.get("content-type"), written, digest)

    @staticmethod
    def _too_large(response: httpx.Response, size: int, max_bytes: int) -> FalDownloadTooLargeError:
        return FalDownloadTooLargeError(
            f"media file exceeds {max_bytes} bytes (at least {size})",
            status_code=response.status_code,
            error_type="download_too_large",
        )

    def _write_atomically(
        self, response: httpx.Response, dest: Path, max_bytes: int, chunk_size: int
    ) -> tuple[int, str]:
        digest = hashlib.sha256()
        written = 0
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in response.iter_bytes(chunk_size):
                    written += len(chunk)
                    if written > max_bytes:
                        raise self._too_large(response, written, max_bytes)
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return written, digest.hexdigest()
