"""falsim speaks fal's queue protocol: auth, URL shapes, bodies, queue semantics, validation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from falsim.server import SimServer
from tests.fixtures.falsim import TEST_KEY, wait_for

ENDPOINT = "imagineart/imagineart-2.0-preview/text-to-image"
APP = "imagineart/imagineart-2.0-preview"
# Long enough that nothing finishes during a test: the queue holds still.
STILL = {"time_scale": 1.0, "latency": "fixed", "median_1k": 600.0, "median_2k": 600.0}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}, timeout=10) as client:
        yield client


def submit(
    http: httpx.Client,
    sim: SimServer,
    body: dict[str, Any],
    endpoint: str = ENDPOINT,
    **params: Any,
) -> dict[str, Any]:
    response = http.post(f"{sim.base_url}/{endpoint}", json=body, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["x-fal-request-id"] == response.json()["request_id"]
    data: dict[str, Any] = response.json()
    return data


def finished(http: httpx.Client, handle: dict[str, Any]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(handle["status_url"]).json()
        return body if body["status"] == "COMPLETED" else None

    result: dict[str, Any] = wait_for(done, what="request to complete")
    return result


@pytest.mark.parametrize(
    "header",
    [None, "Key nocolon", "Bearer a:b", "Key :secret", "Key id:"],
)
def test_missing_or_malformed_key_is_401(falsim: SimServer, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.post(f"{falsim.base_url}/{ENDPOINT}", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "No user found for Key ID and Secret"}
    assert falsim.stats()["submits"] == 0


def test_exact_key_is_demanded_when_configured(make_falsim: Callable[..., SimServer]) -> None:
    sim = make_falsim(key=TEST_KEY)
    url = f"{sim.base_url}/{ENDPOINT}"
    wrong = httpx.post(url, json={"prompt": "x"}, headers={"Authorization": "Key other:secret"})
    assert wrong.status_code == 401
    right = httpx.post(url, json={"prompt": "x"}, headers={"Authorization": f"Key {TEST_KEY}"})
    assert right.status_code == 200
    assert "test-key-secret" not in httpx.get(f"{sim.base_url}/_sim/config").text


def test_status_result_cancel_need_the_key(falsim: SimServer, http: httpx.Client) -> None:
    handle = submit(http, falsim, {"prompt": "x"})
    for method, url in [
        ("GET", handle["status_url"]),
        ("GET", handle["response_url"]),
        ("PUT", handle["cancel_url"]),
    ]:
        assert httpx.request(method, url).status_code == 401


def test_submit_answer_points_back_at_the_simulator(falsim: SimServer, http: httpx.Client) -> None:
    handle = submit(http, falsim, {"prompt": "a lighthouse"})
    request_id = handle["request_id"]
    base = f"{falsim.base_url}/{APP}/requests/{request_id}"
    assert handle["response_url"] == base
    assert handle["status_url"] == f"{base}/status"
    assert handle["cancel_url"] == f"{base}/cancel"
    assert handle["status"] == "IN_QUEUE"
    assert handle["queue_position"] == 0
    assert handle["gateway_request_id"] == request_id


def test_public_url_replaces_the_host(make_falsim: Callable[..., SimServer]) -> None:
    sim = make_falsim(public_url="https://fal.example.test")
    response = httpx.post(
        f"http://127.0.0.1:{sim.port}/{ENDPOINT}",
        json={"prompt": "x"},
        headers={"Authorization": f"Key {TEST_KEY}"},
    )
    assert response.json()["status_url"].startswith("https://fal.example.test/imagineart/")


@pytest.mark.parametrize(
    ("endpoint", "app"),
    [
        ("fal-ai/flux/dev", "fal-ai/flux"),
        ("fal-ai/flux", "fal-ai/flux"),
        ("comfy/owner/alias/sub/path", "comfy/owner/alias"),
        ("workflows/owner/alias", "workflows/owner/alias"),
    ],
)
def test_any_endpoint_with_owner_alias_urls(
    falsim: SimServer, http: httpx.Client, endpoint: str, app: str
) -> None:
    handle = submit(http, falsim, {"prompt": "x"}, endpoint=endpoint)
    assert handle["status_url"] == f"{falsim.base_url}/{app}/requests/{handle['request_id']}/status"
    assert finished(http, handle)["status"] == "COMPLETED"
    assert http.get(handle["response_url"]).status_code == 200
    assert falsim.stats()["submits_by_endpoint"] == {endpoint: 1}


def test_too_short_endpoint_is_404(falsim: SimServer, http: httpx.Client) -> None:
    assert http.post(f"{falsim.base_url}/lonely", json={"prompt": "x"}).status_code == 404


def test_request_under_another_app_is_not_found(falsim: SimServer, http: httpx.Client) -> None:
    handle = submit(http, falsim, {"prompt": "x"})
    other = f"{falsim.base_url}/fal-ai/flux/requests/{handle['request_id']}"
    assert http.get(f"{other}/status").status_code == 404
    assert http.get(other).status_code == 404
    cancel = http.put(f"{other}/cancel")
    assert (cancel.status_code, cancel.json()) == (404, {"status": "NOT_FOUND"})


def test_unknown_request_is_404(falsim: SimServer, http: httpx.Client) -> None:
    base = f"{falsim.base_url}/{APP}/requests/00000000-0000-4000-8000-000000000000"
    assert http.get(f"{base}/status").status_code == 404
    assert http.get(base).status_code == 404
    assert http.put(f"{base}/cancel").json() == {"status": "NOT_FOUND"}


def test_full_lifecycle_bodies(falsim: SimServer, http: httpx.Client) -> None:
    body = {"prompt": "a red fox", "seed": 42, "aspect_ratio": "16:9", "resolution": "1K"}
    handle = submit(http, falsim, body)
    status = finished(http, handle)
    assert status["logs"] is None
    assert status["metrics"]["inference_time"] > 0
    assert "error" not in status
    response = http.get(handle["response_url"])
    assert response.status_code == 200
    assert response.headers["x-fal-request-id"] == handle["request_id"]
    result = response.json()
    assert result["seed"] == 42
    (image,) = result["images"]
    assert (image["width"], image["height"]) == (1024, 576)
    assert image["content_type"] == "image/png"
    assert image["url"].startswith(f"{falsim.base_url}/files/")
    file = httpx.get(image["url"])
    assert file.headers["content-type"] == "image/png"
    assert int(file.headers["content-length"]) == image["file_size"] == len(file.content)
    assert image["file_name"] == image["url"].rsplit("/", 1)[1]


@pytest.mark.parametrize(("flag", "expect_logs"), [("1", True), ("true", True), ("0", False)])
def test_logs_flag_accepts_numbers_and_booleans(
    falsim: SimServer, http: httpx.Client, flag: str, expect_logs: bool
) -> None:
    handle = submit(http, falsim, {"prompt": "x"})
    finished(http, handle)
    body = http.get(handle["status_url"], params={"logs": flag}).json()
    if expect_logs:
        assert body["logs"][0]["message"] == "Starting generation"
        assert {"message", "level", "source", "timestamp"} <= set(body["logs"][-1])
        assert body["logs"][-1]["timestamp"].endswith("Z")
    else:
        assert body["logs"] is None


@pytest.mark.parametrize("seed", [None, 0, -1])
def test_random_seed_is_picked_and_reported(
    falsim: SimServer, http: httpx.Client, seed: int | None
) -> None:
    body: dict[str, Any] = {"prompt": "x", "resolution": "1K"}
    if seed is not None:
        body["seed"] = seed
    handle = submit(http, falsim, body)
    finished(http, handle)
    reported = http.get(handle["response_url"]).json()["seed"]
    assert isinstance(reported, int) and reported > 0


def test_queue_is_fifo_with_positions(make_falsim: Callable[..., SimServer]) -> None:
    sim = make_falsim(concurrency=2, **STILL)
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
        handles = [submit(http, sim, {"prompt": f"p{i}"}) for i in range(5)]
        statuses = [http.get(h["status_url"]).json() for h in handles]
        assert [s["status"] for s in statuses] == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3
        assert [s.get("queue_position") for s in statuses[2:]] == [0, 1, 2]
        assert [h["queue_position"] for h in handles[2:]] == [0, 1, 2]
        assert http.get(handles[0]["status_url"]).status_code == 202
        assert statuses[0]["logs"] is None
        in_progress = http.get(handles[0]["status_url"], params={"logs": 1}).json()
        assert in_progress["logs"][0]["message"] == "Starting generation"
        stuck = http.get(handles[0]["response_url"])
        assert stuck.status_code == 400
        cancel = http.put(handles[2]["cancel_url"])
        assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        assert http.get(handles[3]["status_url"]).json()["queue_position"] == 0
        assert http.get(handles[4]["status_url"]).json()["queue_position"] == 1
        cancelled = http.get(handles[2]["status_url"]).json()
        assert cancelled["status"] == "COMPLETED"
        assert cancelled["error_type"] == "client_cancelled"
        again = http.put(handles[2]["cancel_url"])
        assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
        # A running request gets the signal and keeps its slot (fal's runner may still finish).
        running = http.put(handles[0]["cancel_url"])
        assert running.status_code == 202
        assert http.get(handles[0]["status_url"]).json()["status"] == "IN_PROGRESS"
        sim.configure(concurrency=4)
        assert [http.get(h["status_url"]).json()["status"] for h in handles[3:]] == [
            "IN_PROGRESS",
            "IN_PROGRESS",
        ]
    stats = sim.stats()
    assert stats["max_in_progress"] == 4
    assert stats["requests_by_status"] == {"IN_QUEUE": 0, "IN_PROGRESS": 4, "COMPLETED": 1}


def test_abort_on_cancel_ends_a_running_request(make_falsim: Callable[..., SimServer]) -> None:
    sim = make_falsim(concurrency=1, abort_on_cancel=True, **STILL)
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
        first, second = (submit(http, sim, {"prompt": f"p{i}"}) for i in range(2))
        assert http.put(first["cancel_url"]).status_code == 202
        assert http.get(first["status_url"]).json()["error_type"] == "client_cancelled"
        assert http.get(first["response_url"]).status_code == 499
        assert http.get(second["status_url"]).json()["status"] == "IN_PROGRESS"


def test_completed_request_cannot_be_cancelled(falsim: SimServer, http: httpx.Client) -> None:
    handle = submit(http, falsim, {"prompt": "x"})
    finished(http, handle)
    response = http.put(handle["cancel_url"])
    assert (response.status_code, response.json()) == (400, {"status": "ALREADY_COMPLETED"})


def test_concurrency_bounds_in_progress(make_falsim: Callable[..., SimServer]) -> None:
    # 200 ms per request: the first submits overlap even on a loaded machine.
    sim = make_falsim(concurrency=3, time_scale=0.02, latency="fixed", median_1k=10.0)
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
        handles = [submit(http, sim, {"prompt": f"p{i}", "resolution": "1K"}) for i in range(20)]
        wait_for(lambda: sim.stats()["completed_ok"] == 20, what="all 20 to complete")
    assert sim.stats()["max_in_progress"] == 3
    rows = sim.requests()
    assert [r["request_id"] for r in rows] == [h["request_id"] for h in handles]
    starts = [r["started_at"] for r in rows]
    assert starts == sorted(starts), "FIFO: requests start in submit order"
    for row in rows:
        assert row["submitted_at"] <= row["started_at"] <= row["completed_at"]
        assert row["scheduled_start"] <= row["started_at"]


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({}, ["body", "prompt"], "missing"),
        ({"prompt": ""}, ["body", "prompt"], "string_too_short"),
        ({"prompt": 5}, ["body", "prompt"], "string_type"),
        ({"prompt": "x", "aspect_ratio": "7:5"}, ["body", "aspect_ratio"], "literal_error"),
        ({"prompt": "x", "resolution": "4K"}, ["body", "resolution"], "literal_error"),
        ({"prompt": "x", "reasoning": "max"}, ["body", "reasoning"], "literal_error"),
        ({"prompt": "x", "seed": "7"}, ["body", "seed"], "int_type"),
        ({"prompt": "x", "seed": True}, ["body", "seed"], "int_type"),
        ({"prompt": "x", "seed": 1.5}, ["body", "seed"], "int_from_float"),
    ],
)
def test_invalid_input_ends_as_422_with_detail_list(
    falsim: SimServer, http: httpx.Client, body: dict[str, Any], loc: list[str], kind: str
) -> None:
    handle = submit(http, falsim, body)
    status = finished(http, handle)
    assert status["error"] == "Invalid status code: 422"
    assert status["error_type"] == kind
    response = http.get(handle["response_url"])
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == loc
    assert detail["type"] == kind
    assert isinstance(detail["msg"], str) and detail["msg"]


def test_non_json_body_ends_as_422(falsim: SimServer, http: httpx.Client) -> None:
    response = http.post(f"{falsim.base_url}/{ENDPOINT}", content=b"{not json")
    assert response.status_code == 200
    finished(http, response.json())
    result = http.get(response.json()["response_url"])
    assert result.status_code == 422
    assert result.json()["detail"][0]["type"] == "json_invalid"


def test_several_errors_are_reported_together(falsim: SimServer, http: httpx.Client) -> None:
    handle = submit(http, falsim, {"aspect_ratio": "1:2", "resolution": "8K"})
    finished(http, handle)
    kinds = {d["type"] for d in http.get(handle["response_url"]).json()["detail"]}
    assert kinds == {"missing", "literal_error"}


def test_integral_float_seed_is_accepted(falsim: SimServer, http: httpx.Client) -> None:
    handle = submit(http, falsim, {"prompt": "x", "seed": 7.0, "resolution": "1K"})
    finished(http, handle)
    assert http.get(handle["response_url"]).json()["seed"] == 7


def test_max_queue_length_answers_429(make_falsim: Callable[..., SimServer]) -> None:
    sim = make_falsim(concurrency=1, **STILL)
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
        submit(http, sim, {"prompt": "running"}, fal_max_queue_length=1)
        submit(http, sim, {"prompt": "waiting"}, fal_max_queue_length=1)
        full = http.post(
            f"{sim.base_url}/{ENDPOINT}", json={"prompt": "x"}, params={"fal_max_queue_length": 1}
        )
        assert full.status_code == 429
        other_app = http.post(
            f"{sim.base_url}/fal-ai/flux/dev",
            json={"prompt": "x"},
            params={"fal_max_queue_length": 1},
        )
        assert other_app.status_code == 200
    assert sim.stats()["rejected"] == {"queue_full": 1}


def test_request_timeout_header_ends_queued_request_with_504(
    make_falsim: Callable[..., SimServer],
) -> None:
    sim = make_falsim(
        concurrency=1, time_scale=0.01, latency="fixed", median_2k=1000.0, median_1k=1000.0
    )
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
        submit(http, sim, {"prompt": "hog"})
        response = http.post(
            f"{sim.base_url}/{ENDPOINT}",
            json={"prompt": "late"},
            headers={"X-Fal-Request-Timeout": "5"},
        )
        handle = response.json()
        status = finished(http, handle)
        assert status["error_type"] == "request_timeout"
        result = http.get(handle["response_url"])
        assert result.status_code == 504
        assert result.json() == {"detail": "Request timed out", "error_type": "request_timeout"}
        assert result.headers["X-Fal-Request-Timeout-Type"] == "user"


def test_stats_count_resubmitted_payloads(falsim: SimServer, http: httpx.Client) -> None:
    for body in [{"prompt": "a"}, {"prompt": "a"}, {"prompt": "a", "seed": 3}, {"prompt": "b"}]:
        submit(http, falsim, body)
    stats = falsim.stats()
    assert stats["payloads"] == {
        "distinct": 3,
        "submitted_more_than_once": 1,
        "extra_submits": 1,
        "max_submits": 2,
    }
    assert stats["prompts"] == {"distinct": 2, "submitted_more_than_once": 1}
    assert stats["submits_by_key"] == {"test-key-id": 4}


def test_sim_endpoints_stats_requests_config_reset(falsim: SimServer, http: httpx.Client) -> None:
    handles = [submit(http, falsim, {"prompt": f"p{i}", "resolution": "1K"}) for i in range(3)]
    wait_for(lambda: falsim.stats()["completed_ok"] == 3, what="3 completions")
    stats = httpx.get(f"{falsim.base_url}/_sim/stats").json()
    assert stats["submits"] == 3
    assert stats["requests_by_status"]["COMPLETED"] == 3
    assert stats["schedule_lag"]["complete"]["count"] == 3
    page = httpx.get(f"{falsim.base_url}/_sim/requests", params={"offset": 1, "limit": 1}).json()
    assert page["total"] == 3
    assert [r["request_id"] for r in page["requests"]] == [handles[1]["request_id"]]
    changed = httpx.post(f"{falsim.base_url}/_sim/config", json={"webhook_drop_rate": 0.5})
    assert changed.json()["faults"]["webhook_drop_rate"] == 0.5
    bad = httpx.post(f"{falsim.base_url}/_sim/config", json={"webhook_drop_rate": 2})
    assert bad.status_code == 400
    unknown = httpx.post(f"{falsim.base_url}/_sim/config", json={"nope": 1})
    assert unknown.status_code == 400
    assert httpx.post(f"{falsim.base_url}/_sim/config", json={"port": 1}).status_code == 400
    assert httpx.post(f"{falsim.base_url}/_sim/reset").json() == {"ok": True}
    assert falsim.stats()["submits"] == 0
    assert http.get(handles[0]["status_url"]).status_code == 404


def test_time_scale_zero_is_instant(make_falsim: Callable[..., SimServer]) -> None:
    sim = make_falsim(time_scale=0, concurrency=1)
    with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
        for i in range(50):
            submit(http, sim, {"prompt": f"p{i}"})
        wait_for(lambda: sim.stats()["completed_ok"] == 50, timeout=5, what="instant completions")


def test_same_seed_repeats_request_ids(make_falsim: Callable[..., SimServer]) -> None:
    ids = []
    for _ in range(2):
        sim = make_falsim(seed=99)
        with httpx.Client(headers={"Authorization": f"Key {TEST_KEY}"}) as http:
            ids.append([submit(http, sim, {"prompt": "x"})["request_id"] for _ in range(3)])
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 3


def test_server_stops_cleanly() -> None:
    import threading

    before = {t.name for t in threading.enumerate()}
    with SimServer(time_scale=0) as sim:
        assert httpx.get(f"{sim.base_url}/healthz").json() == {"ok": True}
        port = sim.port
    assert "falsim" not in {t.name for t in threading.enumerate()} - before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
