"""The official Python `fal-client`, pointed at falsim as FAL_PROTOCOL.md says, works end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import fal_client
import fal_client.client
import httpx
import pytest

from fal_queue.webhooks import JWKSCache
from falsim.server import SimServer
from tests.fixtures.falsim import TEST_KEY, WebhookSink, wait_for

ENDPOINT = "imagineart/imagineart-2.0-preview/text-to-image"


@pytest.fixture
def pointed(monkeypatch: pytest.MonkeyPatch) -> Callable[[SimServer], None]:
    """Point fal-client at a simulator: plain-http queue URL and FAL_KEY in the environment."""

    def point(sim: SimServer) -> None:
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{sim.base_url}/")
        monkeypatch.setenv("FAL_KEY", TEST_KEY)

    return point


def test_submit_with_webhook_status_result(
    falsim: SimServer, pointed: Callable[[SimServer], None], webhook_sink: WebhookSink
) -> None:
    pointed(falsim)
    client = fal_client.SyncClient()
    arguments = {"prompt": "a lighthouse at dusk", "seed": 9, "resolution": "1K"}
    handle = client.submit(ENDPOINT, arguments=arguments, webhook_url=webhook_sink.url)
    assert handle.status_url.startswith(falsim.base_url)

    def completed() -> Any:
        status = client.status(ENDPOINT, handle.request_id, with_logs=True)
        return status if isinstance(status, fal_client.Completed) else None

    status = wait_for(completed, what="Completed status")
    assert status.logs and status.logs[0]["message"] == "Starting generation"
    assert status.metrics["inference_time"] > 0
    result = client.result(ENDPOINT, handle.request_id)
    assert result["seed"] == 9
    assert result["images"][0]["width"] == 1024
    assert handle.get() == result

    (hook,) = wait_for(webhook_sink.complete, what="the webhook")
    JWKSCache(falsim.jwks_url).verify(hook.headers, hook.body)
    message = json.loads(hook.body)
    assert message["request_id"] == handle.request_id
    assert message["payload"] == result
    assert "job_id=7" in webhook_sink.url


def test_status_shapes_while_queued_and_running(
    make_falsim: Callable[..., SimServer], pointed: Callable[[SimServer], None]
) -> None:
    sim = make_falsim(concurrency=1, time_scale=1.0, latency="fixed", median_2k=600.0)
    pointed(sim)
    client = fal_client.SyncClient()
    running = client.submit(ENDPOINT, arguments={"prompt": "first"})
    queued = client.submit(ENDPOINT, arguments={"prompt": "second"})
    assert isinstance(running.status(with_logs=True), fal_client.InProgress)
    assert isinstance(running.status(with_logs=False), fal_client.InProgress)
    status = queued.status()
    assert isinstance(status, fal_client.Queued) and status.position == 0
    queued.cancel()
    cancelled = queued.status()
    assert isinstance(cancelled, fal_client.Completed)
    assert cancelled.error_type == "client_cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        client.cancel(ENDPOINT, queued.request_id)
    assert info.value.status_code == 400


def test_subscribe(falsim: SimServer, pointed: Callable[[SimServer], None]) -> None:
    pointed(falsim)
    updates: list[Any] = []
    result = fal_client.SyncClient().subscribe(
        ENDPOINT,
        arguments={"prompt": "a fox", "aspect_ratio": "9:16", "resolution": "1K"},
        with_logs=True,
        on_queue_update=updates.append,
        interval=0.01,
    )
    (image,) = result["images"]
    assert (image["width"], image["height"]) == (576, 1024)
    assert isinstance(updates[-1], fal_client.Completed)
    png = httpx.get(image["url"])
    assert png.headers["content-type"] == "image/png"
    assert len(png.content) == image["file_size"]


def test_async_client_subscribe(falsim: SimServer, pointed: Callable[[SimServer], None]) -> None:
    pointed(falsim)

    async def run() -> Any:
        return await fal_client.AsyncClient().subscribe(
            ENDPOINT, arguments={"prompt": "async"}, interval=0.01
        )

    assert asyncio.run(run())["images"][0]["width"] == 2048


def test_validation_error_reaches_the_client(
    falsim: SimServer, pointed: Callable[[SimServer], None]
) -> None:
    pointed(falsim)
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        fal_client.SyncClient().subscribe(ENDPOINT, arguments={"prompt": ""}, interval=0.01)
    assert info.value.status_code == 422
