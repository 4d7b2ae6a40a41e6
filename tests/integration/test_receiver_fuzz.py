"""Property-based: no body, header set or query string makes the receiver answer 5xx."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fal_queue.webhooks import SIGNATURE_HEADERS
from models import JobStatus
from tests.fixtures.receiver import Receiver, add_job

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# What a WSGI header value can carry: latin-1, no control characters.
header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=255).filter(lambda c: not 127 <= ord(c) < 160),
    max_size=80,
)
any_text = st.text(max_size=80)
# Integers beyond every column width, floats, NUL and lone surrogates included on purpose.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | any_text
    | st.sampled_from(["\x00", "\ud800", "req-fuzz", "OK", "ERROR"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
images = st.lists(
    st.fixed_dictionaries(
        {"url": scalars},
        optional={"width": scalars, "height": scalars, "file_size": scalars, "x": json_values},
    ),
    max_size=3,
)
fal_like = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.sampled_from(["req-fuzz", "req-other", "", "r" * 101]) | scalars,
        "gateway_request_id": scalars,
        "status": st.sampled_from(["OK", "ERROR", "COMPLETED"]) | scalars,
        "payload": st.none()
        | st.fixed_dictionaries({}, optional={"images": images, "seed": scalars})
        | json_values,
        "error": json_values,
        "payload_error": scalars,
    },
)
# Well-formed enough to get past parsing, so matching, applying and storing get fuzzed too.
fal_shaped = st.fixed_dictionaries(
    {
        "request_id": st.sampled_from(["req-fuzz", "req-other"])
        | st.text(min_size=1, max_size=100),
        "status": st.sampled_from(["OK", "ERROR"]),
        "payload": st.none()
        | st.fixed_dictionaries({"images": images}, optional={"seed": scalars, "x": json_values})
        | st.dictionaries(any_text, json_values, max_size=3),
    },
    optional={"gateway_request_id": scalars, "error": json_values},
)
job_ids = st.none() | any_text | st.uuids().map(str)
OK_STATUSES = {200, 400, 401, 413}


@pytest.fixture
def rx(make_receiver: Callable[..., Receiver], database_url: str) -> Receiver:
    return make_receiver(database_url, webhook_max_body_bytes=4096)


@pytest.fixture
def fuzz_job(rx: Receiver) -> uuid.UUID:
    return add_job(rx.sessions, request_id="req-fuzz")


def _dump(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8", "surrogatepass")


@FUZZ
@given(
    body=st.binary(max_size=5000) | json_values.map(_dump) | fal_like.map(_dump),
    headers=st.dictionaries(
        st.sampled_from([*SIGNATURE_HEADERS, "Content-Type", "X-Other"]), header_text, max_size=5
    ),
    job_id=job_ids,
)
def test_unsigned_garbage_never_gets_a_5xx_and_changes_no_job(
    rx: Receiver, fuzz_job: uuid.UUID, body: bytes, headers: dict[str, str], job_id: str | None
) -> None:
    response = rx.post(body, headers, job_id=job_id)
    assert response.status_code in {401, 413}, response.get_data(as_text=True)
    assert rx.job(fuzz_job).status is JobStatus.SUBMITTED


@FUZZ
@given(
    doc=fal_shaped | fal_like | json_values,
    job_id=job_ids,
    request_id=header_text,
    fresh_job=st.booleans(),
)
def test_signed_arbitrary_json_never_gets_a_5xx(
    rx: Receiver,
    fuzz_job: uuid.UUID,
    doc: Any,
    job_id: str | None,
    request_id: str,
    fresh_job: bool,
) -> None:
    if fresh_job and isinstance(doc, dict):
        # A job of its own, so this example's payload is applied, not absorbed as a duplicate.
        doc["request_id"] = uuid.uuid4().hex
        add_job(rx.sessions, request_id=doc["request_id"])
    body = _dump(doc)
    response = rx.post(body, rx.signed(body, request_id or "r"), job_id=job_id)
    assert response.status_code in OK_STATUSES, response.get_data(as_text=True)


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["batch", "status", "q", "seed", "since", "until", "limit", "cursor"]),
        any_text,
        max_size=5,
    ),
    path=any_text,
)
def test_api_parameters_never_get_a_5xx(rx: Receiver, query: dict[str, str], path: str) -> None:
    assert rx.client.get("/api/jobs", query_string=query).status_code in {200, 400}
    assert rx.client.get("/api/batches", query_string=query).status_code in {200, 400}
    for prefix in ("/api/jobs/", "/api/batches/", "/api/images/"):
        assert rx.client.get(prefix + path).status_code in {200, 308, 404, 405}
