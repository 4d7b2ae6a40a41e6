"""The fal queue client against a fake fal spoken through httpx.MockTransport."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fal_queue.client import (
    FalQueueClient,
    detail_message,
    map_error,
    parse_retry_after,
)
from fal_queue.exceptions import (
    FalAccountError,
    FalAPIError,
    FalDownloadTooLargeError,
    FalError,
    FalMalformedResponseError,
    FalPermanentError,
    FalRateLimitedError,
    FalRetryableError,
    FalTransportError,
)
from fal_queue.types import CancelOutcome, RequestStatus
from fal_queue.urls import app_path, request_urls, submit_url, with_suffix

BASE = "https://queue.fal.run"
MODEL = "imagineart/imagineart-2.0-preview/text-to-image"
KEY_ID = "3f1c0b5e-key-id"
KEY_SECRET = "s3cr3t-9d2f7a1e4b6c8d0f"
KEY = f"{KEY_ID}:{KEY_SECRET}"
REQ = "764cabcf-b745-4b3e-ae38-1200304cf45b"
RESPONSE_URL = f"{BASE}/imagineart/imagineart-2.0-preview/requests/{REQ}"

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket connect to a non-loopback address fails the test."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"test tried to reach {host}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


class FakeFal:
    """Records every request and answers with the configured handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
        return self.handler(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def submit_answer(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": REQ,
        "response_url": RESPONSE_URL,
        "status_url": f"{RESPONSE_URL}/status",
        "cancel_url": f"{RESPONSE_URL}/cancel",
        "queue_position": 3,
        "gateway_request_id": "gw-1",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def make_client(handler: Handler, key: str | None = KEY) -> tuple[FalQueueClient, FakeFal]:
    fake = FakeFal(handler)
    return FalQueueClient(BASE, key, transport=httpx.MockTransport(fake)), fake


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


# URL shapes


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (MODEL, "imagineart/imagineart-2.0-preview"),
        ("fal-ai/flux/dev", "fal-ai/flux"),
        ("fal-ai/fast-sdxl", "fal-ai/fast-sdxl"),
        ("workflows/acme/my-flow/run", "workflows/acme/my-flow"),
        ("comfy/acme/graph", "comfy/acme/graph"),
        ("comfy/acme/graph/sub/path", "comfy/acme/graph"),
        ("/fal-ai/flux/dev/", "fal-ai/flux"),
    ],
)
def test_app_path(endpoint: str, expected: str) -> None:
    assert app_path(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["", "fal-ai", "workflows/acme", "comfy/acme", "/"])
def test_app_path_rejects_short_ids(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint id"):
        app_path(endpoint)


def test_request_urls_shape() -> None:
    response, status, cancel = request_urls(BASE + "/", MODEL, REQ)
    assert response == RESPONSE_URL
    assert status == response + "/status"
    assert cancel == response + "/cancel"
    wf = request_urls("http://127.0.0.1:9000", "workflows/acme/flow/x", "r1")
    assert wf[0] == "http://127.0.0.1:9000/workflows/acme/flow/requests/r1"
    comfy = request_urls(BASE, "comfy/acme/graph", "r2")
    assert comfy[2] == f"{BASE}/comfy/acme/graph/requests/r2/cancel"


@pytest.mark.parametrize("request_id", ["", "a/b"])
def test_request_urls_rejects_bad_request_ids(request_id: str) -> None:
    with pytest.raises(ValueError, match="request id"):
        request_urls(BASE, MODEL, request_id)


def test_submit_url_keeps_full_endpoint_id() -> None:
    assert submit_url(BASE + "/", MODEL) == f"{BASE}/{MODEL}"


@pytest.mark.parametrize(
    ("url", "suffix", "expected"),
    [
        (RESPONSE_URL, "status", RESPONSE_URL + "/status"),
        (RESPONSE_URL + "/status", "status", RESPONSE_URL + "/status"),
        (RESPONSE_URL + "/cancel", "status", RESPONSE_URL + "/status"),
        (RESPONSE_URL + "/status", "", RESPONSE_URL),
        (RESPONSE_URL + "/", "cancel", RESPONSE_URL + "/cancel"),
        (RESPONSE_URL + "?x=1", "status", RESPONSE_URL + "/status?x=1"),
    ],
)
def test_with_suffix(url: str, suffix: str, expected: str) -> None:
    assert with_suffix(url, suffix) == expected


# submit


def test_submit_sends_auth_body_and_encoded_webhook() -> None:
    client, fake = make_client(answer(200, submit_answer()))
    webhook = "https://hooks.example.com/webhooks/fal?job_id=42&batch=a b"
    with client:
        result = client.submit(MODEL, {"prompt": "a red fox", "seed": 7}, webhook_url=webhook)
    request = fake.last
    assert request.method == "POST"
    assert request.url.path == f"/{MODEL}"
    assert request.headers["Authorization"] == f"Key {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("imagine-batch")
    assert json.loads(request.content) == {"prompt": "a red fox", "seed": 7}
    raw_query = request.url.query.decode()
    assert "job_id%3D42%26batch" in raw_query
    assert "?" not in raw_query
    assert parse_qs(urlsplit(str(request.url)).query)["fal_webhook"] == [webhook]
    assert result.request_id == REQ
    assert result.response_url == RESPONSE_URL
    assert result.status_url == RESPONSE_URL + "/status"
    assert result.cancel_url == RESPONSE_URL + "/cancel"
    assert result.queue_position == 3
    assert result.gateway_request_id == "gw-1"


def test_submit_without_webhook_or_key() -> None:
    client, fake = make_client(answer(200, submit_answer(gateway_request_id=None)), key=None)
    with client:
        result = client.submit(MODEL, {"prompt": "x"})
    assert "fal_webhook" not in fake.last.url.params
    assert "Authorization" not in fake.last.headers
    assert result.gateway_request_id is None


def test_submit_optional_headers_and_queue_limit() -> None:
    client, fake = make_client(answer(200, submit_answer()))
    with client:
        client.submit(
            MODEL,
            {"prompt": "x"},
            priority="low",
            start_timeout=30,
            max_queue_length=100,
            extra_headers={"X-Fal-Store-IO": "0", "Authorization": "Key forged"},
        )
        request = fake.last
        assert request.headers["X-Fal-Queue-Priority"] == "low"
        assert request.headers["X-Fal-Request-Timeout"] == "30"
        assert request.headers["X-Fal-Store-IO"] == "0"
        assert request.headers["Authorization"] == f"Key {KEY}"
        assert request.url.params["fal_max_queue_length"] == "100"
        client.submit(MODEL, {"prompt": "x"}, start_timeout=1.5)
        assert fake.last.headers["X-Fal-Request-Timeout"] == "1.5"
        with pytest.raises(ValueError, match="start_timeout"):
            client.submit(MODEL, {"prompt": "x"}, start_timeout=0)


@pytest.mark.parametrize("missing", ["request_id", "response_url", "status_url", "cancel_url"])
def test_submit_requires_the_four_fields(missing: str) -> None:
    body = submit_answer()
    del body[missing]
    client, _ = make_client(answer(200, body))
    with client, pytest.raises(FalMalformedResponseError, match=missing) as info:
        client.submit(MODEL, {"prompt": "x"})
    assert isinstance(info.value, FalRetryableError)
    assert info.value.status_code == 200


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>proxy</html>"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json=submit_answer(request_id="")),
        httpx.Response(200, json=submit_answer(status_url=42)),
        httpx.Response(200),
    ],
)
def test_submit_malformed_bodies_are_retryable(response: httpx.Response) -> None:
    client, _ = make_client(lambda request: response)
    with client, pytest.raises(FalMalformedResponseError):
        client.submit(MODEL, {"prompt": "x"})


def test_submit_tolerates_odd_queue_position() -> None:
    client, _ = make_client(answer(200, submit_answer(queue_position="5")))
    with client:
        assert client.submit(MODEL, {"prompt": "x"}).queue_position == 5
    client, _ = make_client(answer(200, submit_answer(queue_position=None)))
    with client:
        assert client.submit(MODEL, {"prompt": "x"}).queue_position is None


def test_submit_error_statuses_raise_mapped_errors() -> None:
    client, _ = make_client(answer(429, {"detail": "Too many"}, {"Retry-After": "7"}))
    with client, pytest.raises(FalRateLimitedError) as info:
        client.submit(MODEL, {"prompt": "x"})
    assert info.value.retry_after == 7
    assert info.value.status_code == 429


# status


def test_status_in_queue_202() -> None:
    body = {"status": "IN_QUEUE", "request_id": REQ, "queue_position": 2, "response_url": "u"}
    client, fake = make_client(answer(202, body))
    with client:
        status = client.status(RESPONSE_URL + "/status", logs=True)
    assert fake.last.method == "GET"
    assert fake.last.url.path.endswith(f"/requests/{REQ}/status")
    assert fake.last.url.params["logs"] == "1"
    assert fake.last.headers["Authorization"] == f"Key {KEY}"
    assert status.status is RequestStatus.IN_QUEUE
    assert status.queue_position == 2
    assert status.request_id == REQ
    assert status.logs == []
    assert not status.done


def test_status_in_progress_with_logs_from_response_url() -> None:
    log = {"message": "step 1", "level": "INFO", "source": "user", "timestamp": "t"}
    body = {"status": "IN_PROGRESS", "request_id": REQ, "logs": [log, "junk"]}
    client, fake = make_client(answer(202, body))
    with client:
        status = client.status(RESPONSE_URL)
    assert fake.last.url.path == f"/imagineart/imagineart-2.0-preview/requests/{REQ}/status"
    assert fake.last.url.params["logs"] == "0"
    assert status.status is RequestStatus.IN_PROGRESS
    assert status.logs == [log]


def test_status_completed_ok_and_failed() -> None:
    ok = {"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 3.42}}
    client, _ = make_client(answer(200, ok))
    with client:
        status = client.status(RESPONSE_URL)
    assert status.done
    assert not status.failed
    assert status.metrics == {"inference_time": 3.42}
    assert status.logs == []
    failed = {
        "status": "COMPLETED",
        "logs": [],
        "error": "boom",
        "error_type": "runner_server_error",
    }
    client, _ = make_client(answer(200, failed))
    with client:
        status = client.status(RESPONSE_URL)
    assert status.failed
    assert status.error == "boom"
    assert status.error_type == "runner_server_error"


@pytest.mark.parametrize("body", [{"status": "FAILED"}, {}, {"status": None}])
def test_status_unknown_state_is_malformed(body: dict[str, Any]) -> None:
    client, _ = make_client(answer(200, body))
    with client, pytest.raises(FalMalformedResponseError, match="status"):
        client.status(RESPONSE_URL)


def test_status_error_status_raises() -> None:
    client, _ = make_client(answer(404, {"detail": "Request not found"}))
    with client, pytest.raises(FalPermanentError, match="Request not found"):
        client.status(RESPONSE_URL)


# result


def test_result_returns_model_output() -> None:
    output = {"images": [{"url": "https://v3.fal.media/files/a.png", "width": 2048}], "seed": 42}
    client, fake = make_client(answer(200, output, {"x-fal-request-id": REQ}))
    with client:
        assert client.result(RESPONSE_URL) == output
        assert fake.last.url.path == f"/imagineart/imagineart-2.0-preview/requests/{REQ}"
        client.result(RESPONSE_URL + "/status")
        assert fake.last.url.path == f"/imagineart/imagineart-2.0-preview/requests/{REQ}"


def test_result_validation_error_carries_fal_type_and_message() -> None:
    detail = [
        {"loc": ["body", "prompt"], "msg": "field required", "type": "missing"},
        {"loc": ["body", "aspect_ratio"], "msg": "bad enum", "type": "enum", "ctx": {}},
    ]
    client, _ = make_client(
        answer(422, {"detail": detail}, {"X-Fal-Error-Type": "validation_error"})
    )
    with client, pytest.raises(FalPermanentError) as info:
        client.result(RESPONSE_URL)
    error = info.value
    assert error.status_code == 422
    assert error.error_type == "validation_error"
    assert error.message == "body.prompt: field required; body.aspect_ratio: bad enum"
    assert error.detail == detail


def test_result_content_policy_and_runner_errors() -> None:
    body = {"detail": "Flagged", "error_type": "content_policy_violation"}
    client, _ = make_client(answer(422, body))
    with client, pytest.raises(FalPermanentError) as info:
        client.result(RESPONSE_URL)
    assert info.value.error_type == "content_policy_violation"
    client, _ = make_client(
        answer(500, {"detail": "Runner crashed", "error_type": "runner_server_error"})
    )
    with client, pytest.raises(FalRetryableError) as retry_info:
        client.result(RESPONSE_URL)
    assert retry_info.value.error_type == "runner_server_error"
    assert str(retry_info.value) == "Runner crashed"


def test_result_non_object_body_is_malformed() -> None:
    client, _ = make_client(lambda request: httpx.Response(200, text="not json"))
    with client, pytest.raises(FalMalformedResponseError):
        client.result(RESPONSE_URL)


# cancel


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (202, {"status": "CANCELLATION_REQUESTED"}, CancelOutcome.CANCELLATION_REQUESTED),
        (200, None, CancelOutcome.CANCELLATION_REQUESTED),
        (400, {"status": "ALREADY_COMPLETED"}, CancelOutcome.ALREADY_COMPLETED),
        (404, {"status": "NOT_FOUND"}, CancelOutcome.NOT_FOUND),
        (404, None, CancelOutcome.NOT_FOUND),
    ],
)
def test_cancel_outcomes(status: int, body: object, outcome: CancelOutcome) -> None:
    client, fake = make_client(answer(status, body))
    with client:
        assert client.cancel(RESPONSE_URL + "/cancel") is outcome
    assert fake.last.method == "PUT"
    assert fake.last.url.path == f"/imagineart/imagineart-2.0-preview/requests/{REQ}/cancel"
    assert fake.last.headers["Authorization"] == f"Key {KEY}"


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"detail": "bad", "error_type": "bad_request"}, FalPermanentError),
        (503, {"detail": "busy"}, FalRetryableError),
        (401, {"detail": "No user found for Key ID and Secret"}, FalAccountError),
    ],
)
def test_cancel_errors(status: int, body: object, error: type[FalAPIError]) -> None:
    client, _ = make_client(answer(status, body))
    with client, pytest.raises(error):
        client.cancel(RESPONSE_URL)


# error mapping


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, FalPermanentError),
        (401, FalAccountError),
        (403, FalAccountError),
        (404, FalPermanentError),
        (408, FalRetryableError),
        (409, FalRetryableError),
        (410, FalPermanentError),
        (413, FalPermanentError),
        (422, FalPermanentError),
        (429, FalRateLimitedError),
        (499, FalRetryableError),
        (500, FalRetryableError),
        (501, FalRetryableError),
        (502, FalRetryableError),
        (503, FalRetryableError),
        (504, FalRetryableError),
        (599, FalRetryableError),
        (302, FalMalformedResponseError),
    ],
)
def test_map_error_per_status(status: int, expected: type[FalAPIError]) -> None:
    error = map_error(status, httpx.Headers(), b'{"detail": "x"}')
    assert type(error) is expected
    assert error.status_code == status
    assert error.message == "x"


def test_map_error_client_cancelled_is_permanent() -> None:
    body = b'{"detail": "Client cancelled", "error_type": "client_cancelled"}'
    assert type(map_error(499, httpx.Headers(), body)) is FalPermanentError
    body = b'{"detail": "Client disconnected", "error_type": "client_disconnected"}'
    assert type(map_error(499, httpx.Headers(), body)) is FalRetryableError


def test_map_error_account_locked_message() -> None:
    body = json.dumps({"detail": "User is locked. Reason: Exhausted balance. Top up."}).encode()
    error = map_error(403, httpx.Headers(), body)
    assert isinstance(error, FalAccountError)
    assert str(error) == "User is locked. Reason: Exhausted balance. Top up."


def test_map_error_media_auth_statuses_are_permanent() -> None:
    assert type(map_error(403, httpx.Headers(), b"", media=True)) is FalPermanentError
    assert type(map_error(401, httpx.Headers(), b"", media=True)) is FalPermanentError


def test_map_error_type_header_wins_over_body() -> None:
    headers = httpx.Headers({"X-Fal-Error-Type": "request_timeout"})
    body = b'{"detail": "Request timed out", "error_type": "other"}'
    error = map_error(504, headers, body)
    assert error.error_type == "request_timeout"
    assert map_error(504, httpx.Headers(), body).error_type == "other"
    assert map_error(504, httpx.Headers(), b"{}").error_type is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "HTTP 502 from fal"),
        (b"<html><body>Bad   gateway</body></html>", "HTTP 502 from fal: <html><body>Bad gateway"),
        (b'{"error": "upstream"}', "upstream"),
        (b'{"detail": null, "message": "hm"}', "hm"),
        (b"[1, 2]", "HTTP 502 from fal: [1, 2]"),
        (b'{"detail": {"code": 1}}', '{"code": 1}'),
    ],
)
def test_map_error_messages_from_odd_bodies(body: bytes, message: str) -> None:
    error = map_error(502, httpx.Headers(), body)
    assert isinstance(error, FalRetryableError)
    assert error.message.startswith(message)


def test_map_error_message_is_bounded_and_raw_detail_kept() -> None:
    detail = "x" * 5000
    error = map_error(422, httpx.Headers(), json.dumps({"detail": detail}).encode())
    assert len(error.message) <= 500
    assert error.detail == detail


def test_detail_message_forms() -> None:
    assert detail_message(None) is None
    assert detail_message("  spaced\n  out ") == "spaced out"
    assert detail_message([{"loc": ["body", "seed"], "msg": "not int"}]) == "body.seed: not int"
    assert detail_message([{"msg": "no loc"}, "plain"]) == "no loc; plain"
    assert detail_message([]) is None


# Retry-After and x-ratelimit-reset

NOW = 1_900_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "12"}, 12.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"x-ratelimit-reset": "30"}, 30.0),
        ({"x-ratelimit-reset": str(int(NOW) + 45)}, 45.0),
        ({"Retry-After": "5", "x-ratelimit-reset": "20"}, 20.0),
        ({"Retry-After": "50", "x-ratelimit-reset": "20"}, 50.0),
        ({"Retry-After": "bogus", "x-ratelimit-reset": "8"}, 8.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers), now=NOW) == expected


def test_parse_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 90, tz=UTC)
    headers = httpx.Headers({"Retry-After": format_datetime(when, usegmt=True)})
    assert parse_retry_after(headers, now=NOW) == pytest.approx(90.0)
    past = format_datetime(datetime.fromtimestamp(NOW - 90, tz=UTC), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now=NOW) == 0.0


def test_retry_after_on_503_too() -> None:
    error = map_error(503, httpx.Headers({"Retry-After": "4"}), b"")
    assert isinstance(error, FalRetryableError)
    assert error.retry_after == 4.0


# transport errors


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("pool exhausted"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_transport_errors(exc: httpx.TransportError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = make_client(handler)
    with client:
        for call in (
            lambda: client.submit(MODEL, {"prompt": "x"}),
            lambda: client.status(RESPONSE_URL),
            lambda: client.result(RESPONSE_URL),
            lambda: client.cancel(RESPONSE_URL),
        ):
            with pytest.raises(FalTransportError) as info:
                call()
            assert info.value.__cause__ is exc
            assert not isinstance(info.value, FalAPIError)


# download

MEDIA = "https://v3.fal.media/files/monkey/abc.png"


def media_handler(content: bytes, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "queue.fal.run":
            return httpx.Response(200, json=submit_answer())
        return httpx.Response(
            200, content=content, headers={"Content-Type": "image/png", **headers}
        )

    return handler


def chunked(content: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def test_download_streams_with_sha256_and_no_auth(tmp_path: Path) -> None:
    content = bytes(range(256)) * 1000
    client, fake = make_client(media_handler(content))
    dest = tmp_path / "batch" / "job-0.png"
    with client:
        client.submit(MODEL, {"prompt": "x"})
        result = client.download(MEDIA, dest, max_bytes=1_000_000, chunk_size=4096)
    assert result.content_type == "image/png"
    assert result.bytes_written == len(content)
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert dest.read_bytes() == content
    assert sorted(p.name for p in dest.parent.iterdir()) == ["job-0.png"]
    queue_call, media_call = fake.requests
    assert queue_call.headers["Authorization"] == f"Key {KEY}"
    assert "Authorization" not in media_call.headers
    assert KEY_SECRET not in str(media_call.headers)


def test_download_chunked_body_without_length(tmp_path: Path) -> None:
    content = b"\x89PNG" + b"z" * 100_000

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunked(content, 1000))

    client, _ = make_client(handler)
    dest = tmp_path / "a.png"
    dest.write_bytes(b"old")
    with client:
        result = client.download(MEDIA, dest, max_bytes=200_000, chunk_size=512)
    assert result == (None, len(content), hashlib.sha256(content).hexdigest())
    assert dest.read_bytes() == content


def test_download_follows_redirects_without_auth(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(302, headers={"Location": MEDIA})
        return httpx.Response(200, content=b"png", headers={"Content-Type": "image/png"})

    client, fake = make_client(handler)
    with client:
        result = client.download("https://fal.media/old", tmp_path / "x.png")
    assert result.bytes_written == 3
    assert all("Authorization" not in r.headers for r in fake.requests)


def test_download_size_limit_from_content_length(tmp_path: Path) -> None:
    client, _ = make_client(media_handler(b"x" * 2000))
    dest = tmp_path / "big.png"
    with client, pytest.raises(FalDownloadTooLargeError) as info:
        client.download(MEDIA, dest, max_bytes=1000)
    assert isinstance(info.value, FalPermanentError)
    assert list(tmp_path.iterdir()) == []


def test_download_size_limit_while_streaming(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunked(b"y" * 5000, 100))

    client, _ = make_client(handler)
    dest = tmp_path / "big.png"
    with client, pytest.raises(FalDownloadTooLargeError):
        client.download(MEDIA, dest, max_bytes=1000, chunk_size=100)
    assert list(tmp_path.iterdir()) == []


def test_download_transport_error_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset")

    client, _ = make_client(lambda request: httpx.Response(200, content=broken()))
    dest = tmp_path / "x.png"
    with client, pytest.raises(FalTransportError):
        client.download(MEDIA, dest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [(404, FalPermanentError), (403, FalPermanentError), (503, FalRetryableError)],
)
def test_download_error_statuses(tmp_path: Path, status: int, expected: type[FalAPIError]) -> None:
    client, _ = make_client(lambda request: httpx.Response(status, text="nope"))
    with client, pytest.raises(expected) as info:
        client.download(MEDIA, tmp_path / "x.png")
    assert type(info.value) is expected
    assert list(tmp_path.iterdir()) == []


def test_download_connect_error(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route")

    client, _ = make_client(handler)
    with client, pytest.raises(FalTransportError):
        client.download(MEDIA, tmp_path / "x.png")


# secrets, logging, lifecycle


def _leaky_handler(status: int) -> Handler:
    """A worst-case server that echoes the Authorization header back in every error."""

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        if status == 0:
            raise httpx.ConnectError(f"refused while sending {auth}")
        body = {"detail": [{"loc": ["header", auth], "msg": f"bad {auth}"}], "error": auth}
        headers = {"X-Fal-Error-Type": "echo", "Retry-After": "1"}
        return httpx.Response(status, json=body, headers=headers)

    return handler


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert KEY_SECRET not in text


@pytest.mark.parametrize("status", [0, 400, 401, 403, 404, 408, 409, 422, 429, 499, 500, 503, 504])
def test_secret_never_leaks(status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, _ = make_client(_leaky_handler(status))
    calls: list[Callable[[], object]] = [
        lambda: client.submit(MODEL, {"prompt": "x"}, webhook_url="https://h/w"),
        lambda: client.status(RESPONSE_URL, logs=True),
        lambda: client.result(RESPONSE_URL),
        lambda: client.cancel(RESPONSE_URL),
    ]
    with client:
        for index, call in enumerate(calls):
            if status == 404 and index == 3:
                assert call() is CancelOutcome.NOT_FOUND
                continue
            with pytest.raises(FalError) as info:
                call()
            error = info.value
            _assert_no_secret(str(error), repr(error), repr(error.args))
            if isinstance(error, FalAPIError):
                _assert_no_secret(error.message, repr(error.detail))
        _assert_no_secret(repr(client), str(client), repr(vars(client)))
    _assert_no_secret(caplog.text, *(repr(r.args) for r in caplog.records))


def test_malformed_answer_does_not_leak(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, _ = make_client(lambda request: httpx.Response(200, text=KEY))
    with client, pytest.raises(FalMalformedResponseError) as info:
        client.submit(MODEL, {"prompt": "x"})
    _assert_no_secret(str(info.value), repr(info.value.args), caplog.text)


def test_debug_log_has_method_path_status_not_prompt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fal_queue.client")
    client, _ = make_client(answer(200, submit_answer()))
    with client:
        client.submit(
            MODEL, {"prompt": "a very private prompt"}, webhook_url="https://h/w?job_id=1"
        )
    records = [r for r in caplog.records if r.name == "fal_queue.client"]
    assert len(records) == 1
    text = records[0].getMessage()
    assert text.startswith(f"POST /{MODEL} -> 200 in ")
    assert "private prompt" not in caplog.text
    _assert_no_secret(caplog.text)


def test_close_and_context_manager() -> None:
    client, _ = make_client(answer(200, submit_answer()))
    with client as entered:
        assert entered is client
    with pytest.raises(RuntimeError):
        client.submit(MODEL, {"prompt": "x"})
    client.close()


def test_concurrent_calls_share_one_client() -> None:
    client, fake = make_client(answer(200, submit_answer()))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                client.submit(MODEL, {"prompt": "x"})
        except BaseException as exc:
            errors.append(exc)

    with client:
        threads = [threading.Thread(target=work) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(fake.requests) == 500
