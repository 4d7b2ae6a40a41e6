"""The official JS client `@fal-ai/client` works against falsim (where Node is installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fal_queue.webhooks import JWKSCache
from falsim.server import SimServer
from tests.fixtures.falsim import TEST_KEY, WebhookSink, wait_for

JS_DIR = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture
def node() -> str:
    """The node binary, once the JS client is installed (`npm ci --prefix tests/js`)."""
    binary = shutil.which("node")
    if binary is None:
        pytest.skip("node is not installed: the JS client test needs Node.js")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        message = "tests/js/node_modules missing: run `npm ci --prefix tests/js`"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (REQUIRE_SERVICES=1 forbids skipping)", pytrace=False)
        pytest.skip(message)
    return binary


def test_official_js_client(node: str, falsim: SimServer, webhook_sink: WebhookSink) -> None:
    env = {
        **os.environ,
        "FALSIM_URL": falsim.base_url,
        "FAL_KEY": TEST_KEY,
        "WEBHOOK_URL": webhook_sink.url,
    }
    run = subprocess.run(
        [node, str(JS_DIR / "falsim_client.mjs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    request_id = out["submitted"]["request_id"]
    assert out["status"]["status"] == "COMPLETED"
    assert out["status"]["logs"][0]["message"] == "Starting generation"
    assert out["result"]["requestId"] == request_id
    assert out["result"]["data"]["seed"] == 21
    assert out["result"]["data"]["images"][0]["width"] == 1024
    assert out["subscribed"]["requestId"]
    image = out["subscribed"]["data"]["images"][0]
    assert (image["width"], image["height"]) == (1024, 576)
    assert out["updates"][-1] == "COMPLETED"

    (hook,) = wait_for(webhook_sink.complete, what="the JS client's webhook")
    JWKSCache(falsim.jwks_url).verify(hook.headers, hook.body)
    assert json.loads(hook.body)["request_id"] == request_id
    assert falsim.stats()["submits"] == 2
