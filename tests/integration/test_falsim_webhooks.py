"""falsim's signed webhooks, delivery retries, and every fault switch."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from fal_queue.webhooks import JWKSCache
from falsim.server import SimServer
from tests.fixtures.falsim import TEST_KEY, ReceivedWebhook, WebhookSink, wait_for

ENDPOINT = "imagineart/imagineart-2.0-preview/text-to-image"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}, timeout=10) as client:
        yield client


def submit(
    http: httpx.Client, sim: SimServer, body: dict[str, Any], webhook: str | None = None
) -> httpx.Response:
    params = {"fal_webhook": webhook} if webhook else {}
    return http.post(f"{sim.base_url}/{ENDPOINT}", json=body, params=params)


def hooks_for(sink: WebhookSink, count: int, timeout: float = 10.0) -> list[ReceivedWebhook]:
    received: list[ReceivedWebhook] = wait_for(
        lambda: len(sink.complete()) >= count and sink.complete(),
        timeout=timeout,
        what=f"{count} webhook(s)",
    )
    return received


def verify_all(sim: SimServer, hooks: list[ReceivedWebhook]) -> None:
    cache = JWKSCache(sim.jwks_url)
    for hook in hooks:
        cache.verify(hook.headers, hook.body)


def test_ok_webhook_is_signed_and_verifies_against_jwks(
    falsim: SimServer, http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    handle = submit(http, falsim, {"prompt": "a cat", "seed": 5}, webhook_sink.url).json()
    (hook,) = hooks_for(webhook_sink, 1)
    verify_all(falsim, [hook])
    message = json.loads(hook.body)
    assert message["status"] == "OK"
    assert message["request_id"] == message["gateway_request_id"] == handle["request_id"]
    assert message["payload"]["seed"] == 5
    assert message["payload"] == httpx.get(handle["response_url"], headers=http.headers).json()
    assert hook.headers["X-Fal-Webhook-Request-Id"] == handle["request_id"]
    assert hook.headers["X-Fal-Webhook-User-Id"] == "falsim-user"
    assert hook.headers["Content-Type"] == "application/json"
    stats = falsim.stats()["webhooks"]
    assert (stats["attempts"], stats["delivered"], stats["pending"]) == (1, 1, 0)


def test_jwks_document_shape(falsim: SimServer) -> None:
    (key,) = httpx.get(falsim.jwks_url).json()["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
    assert "=" not in key["x"]


def test_validation_error_webhook(
    falsim: SimServer, http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    submit(http, falsim, {"prompt": ""}, webhook_sink.url)
    (hook,) = hooks_for(webhook_sink, 1)
    verify_all(falsim, [hook])
    message = json.loads(hook.body)
    assert message["status"] == "ERROR"
    assert message["error"] == "Invalid status code: 422"
    assert message["payload"]["detail"][0]["loc"] == ["body", "prompt"]


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("content_policy_violation", 422),
        ("validation", 422),
        ("runner_server_error", 500),
        ("runner_disconnected", 503),
    ],
)
def test_model_error_fault(
    make_falsim: Callable[..., SimServer],
    http: httpx.Client,
    webhook_sink: WebhookSink,
    kind: str,
    code: int,
) -> None:
    sim = make_falsim(model_error_rate=1.0, model_error_types=[kind])
    handle = submit(http, sim, {"prompt": "x"}, webhook_sink.url).json()
    (hook,) = hooks_for(webhook_sink, 1)
    message = json.loads(hook.body)
    assert (message["status"], message["error"]) == ("ERROR", f"Invalid status code: {code}")
    result = http.get(handle["response_url"])
    assert result.status_code == code
    assert message["payload"] == result.json()
    status = http.get(handle["status_url"]).json()
    assert status["status"] == "COMPLETED" and status["error"]
    if kind == "validation":
        assert isinstance(result.json()["detail"], list)
    else:
        assert status["error_type"] == kind
        assert result.headers["X-Fal-Error-Type"] == kind
    if code != 422:
        assert result.json()["error_type"] == kind
    assert sim.stats()["errors_by_type"] == {status["error_type"]: 1}


def test_prompt_marker_forces_an_error(falsim: SimServer, http: httpx.Client) -> None:
    handle = submit(http, falsim, {"prompt": "bad falsim:error=content_policy_violation"}).json()
    wait_for(lambda: http.get(handle["status_url"]).json()["status"] == "COMPLETED")
    result = http.get(handle["response_url"])
    assert result.status_code == 422
    assert result.json()["detail"][0]["type"] == "content_policy_violation"


def test_model_error_rate_is_seeded(make_falsim: Callable[..., SimServer]) -> None:
    outcomes = []
    for _ in range(2):
        sim = make_falsim(model_error_rate=0.5, seed=7, time_scale=0)
        with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
            handles = [submit(http, sim, {"prompt": f"p{i}"}).json() for i in range(30)]
            wait_for(lambda s=sim: s.stats()["requests_by_status"]["COMPLETED"] == 30)
            outcomes.append([http.get(h["response_url"]).status_code for h in handles])
    assert outcomes[0] == outcomes[1]
    assert 200 in outcomes[0] and any(code != 200 for code in outcomes[0])


def test_submit_429_fault_sends_retry_after(
    make_falsim: Callable[..., SimServer], http: httpx.Client
) -> None:
    sim = make_falsim(submit_429_rate=1.0, retry_after_seconds=3)
    response = submit(http, sim, {"prompt": "x"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert sim.stats()["rejected"] == {"429": 1}
    assert sim.stats()["submits"] == 0
    sim.set_faults(submit_429_rate=0.0)
    assert submit(http, sim, {"prompt": "x"}).status_code == 200


def test_submit_503_fault(make_falsim: Callable[..., SimServer], http: httpx.Client) -> None:
    sim = make_falsim(submit_503_rate=1.0)
    response = submit(http, sim, {"prompt": "x"})
    assert response.status_code == 503
    assert "detail" in response.json()
    assert sim.stats()["rejected"] == {"503": 1}


def test_dropped_webhook_is_never_delivered(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    sim = make_falsim(webhook_drop_rate=1.0)
    submit(http, sim, {"prompt": "x"}, webhook_sink.url)
    wait_for(lambda: sim.stats()["webhooks"]["dropped"] == 1, what="the drop")
    # The control webhook after flipping the fault proves the receiver was reachable all along.
    sim.set_faults(webhook_drop_rate=0.0)
    control = submit(http, sim, {"prompt": "y"}, webhook_sink.url).json()
    (hook,) = hooks_for(webhook_sink, 1)
    assert json.loads(hook.body)["request_id"] == control["request_id"]
    assert sim.stats()["webhooks"]["attempts"] == 1


def test_duplicated_webhook_arrives_twice(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    sim = make_falsim(webhook_duplicate_rate=1.0)
    handle = submit(http, sim, {"prompt": "x"}, webhook_sink.url).json()
    hooks = hooks_for(webhook_sink, 2)
    assert [json.loads(h.body)["request_id"] for h in hooks] == [handle["request_id"]] * 2
    assert hooks[0].body == hooks[1].body
    verify_all(sim, hooks)
    assert sim.stats()["webhooks"]["duplicates_sent"] == 1


def test_delayed_webhooks_are_reordered(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    sim = make_falsim(
        time_scale=0.01, concurrency=20, webhook_delay_rate=1.0, webhook_delay_max=30.0
    )
    handles = [
        submit(http, sim, {"prompt": f"p{i}", "resolution": "1K"}, webhook_sink.url).json()
        for i in range(12)
    ]
    hooks = hooks_for(webhook_sink, 12)
    arrival = [json.loads(h.body)["request_id"] for h in hooks]
    completion = [r["request_id"] for r in sorted(sim.requests(), key=lambda r: r["completed_at"])]
    assert sorted(arrival) == sorted(h["request_id"] for h in handles)
    assert arrival != completion
    assert sim.stats()["webhooks"]["delayed"] == 12


def test_null_payload_webhook(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    sim = make_falsim(webhook_null_payload_rate=1.0)
    handle = submit(http, sim, {"prompt": "x"}, webhook_sink.url).json()
    (hook,) = hooks_for(webhook_sink, 1)
    message = json.loads(hook.body)
    assert message["status"] == "OK"
    assert message["payload"] is None
    assert message["payload_error"].startswith("Response payload is not JSON serializable")
    assert http.get(handle["response_url"]).status_code == 200
    assert sim.stats()["webhooks"]["null_payloads"] == 1


def test_failed_delivery_is_retried_until_2xx(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    answers = iter([500, 404, 204])
    webhook_sink.respond = lambda hook: next(answers)
    sim = make_falsim(webhook_backoff=1.0)
    submit(http, sim, {"prompt": "x"}, webhook_sink.url)
    hooks = hooks_for(webhook_sink, 3)
    wait_for(lambda: sim.stats()["webhooks"]["delivered"] == 1, what="delivery")
    verify_all(sim, hooks)
    stats = sim.stats()["webhooks"]
    assert (stats["attempts"], stats["failed_attempts"], stats["pending"]) == (3, 2, 0)
    assert sim.requests()[0]["webhook_attempts"] == 3


def test_delivery_gives_up_after_the_configured_attempts(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    webhook_sink.respond = lambda hook: 503
    sim = make_falsim(webhook_attempts=4, webhook_backoff=1.0)
    submit(http, sim, {"prompt": "x"}, webhook_sink.url)
    wait_for(lambda: sim.stats()["webhooks"]["exhausted"] == 1, what="exhaustion")
    assert len(webhook_sink.complete()) == 4
    assert sim.stats()["webhooks"]["pending"] == 0


def test_unreachable_receiver_is_retried(
    make_falsim: Callable[..., SimServer], http: httpx.Client
) -> None:
    sim = make_falsim(webhook_attempts=2, webhook_backoff=1.0)
    submit(http, sim, {"prompt": "x"}, "http://127.0.0.1:9/nobody")
    wait_for(lambda: sim.stats()["webhooks"]["exhausted"] == 1, what="exhaustion")
    assert sim.stats()["webhooks"]["failed_attempts"] == 2


def test_slow_delivery_times_out_and_is_retried(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    sim = make_falsim(webhook_slow_rate=1.0, webhook_backoff=1.0)
    submit(http, sim, {"prompt": "x"}, webhook_sink.url)
    wait_for(lambda: sim.stats()["webhooks"]["timeouts"] >= 1, what="a timed-out attempt")
    sim.set_faults(webhook_slow_rate=0.0)
    (hook,) = hooks_for(webhook_sink, 1)
    verify_all(sim, [hook])
    stats = sim.stats()["webhooks"]
    assert stats["slow"] >= 1 and stats["delivered"] == 1
    assert stats["attempts"] == stats["slow"] + 1


def test_deliveries_use_a_bounded_pool(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    webhook_sink.delay = 0.05
    sim = make_falsim(webhook_concurrency=2, concurrency=20, time_scale=0)
    for i in range(12):
        submit(http, sim, {"prompt": f"p{i}"}, webhook_sink.url)
    hooks_for(webhook_sink, 12)
    assert webhook_sink.max_active <= 2


def test_cancelled_request_sends_no_webhook_by_default(
    make_falsim: Callable[..., SimServer], http: httpx.Client, webhook_sink: WebhookSink
) -> None:
    sim = make_falsim(concurrency=1, time_scale=1.0, latency="fixed", median_2k=600.0)
    submit(http, sim, {"prompt": "hog"}, webhook_sink.url)
    queued = submit(http, sim, {"prompt": "x"}, webhook_sink.url).json()
    assert http.put(queued["cancel_url"]).status_code == 202
    sim.configure(webhook_on_cancel=True)
    queued = submit(http, sim, {"prompt": "y"}, webhook_sink.url).json()
    assert http.put(queued["cancel_url"]).status_code == 202
    (hook,) = hooks_for(webhook_sink, 1)
    message = json.loads(hook.body)
    assert message["request_id"] == queued["request_id"]
    assert (message["status"], message["error"]) == ("ERROR", "Invalid status code: 499")
