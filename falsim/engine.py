"""The simulated queue: FIFO waiting line, concurrency slots, the latency schedule, outcomes.

Everything here runs on one asyncio loop. Requests are plain records; the only per-request
scheduling is a TimerHandle on the loop's own timer heap (start timeout, completion), so 100,000
outstanding requests cost memory, not tasks. Each request draws from its own RNG seeded by the
simulator seed and its submit number, so a run with the same seed and the same submits repeats.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from falsim.config import SimConfig
from falsim.delivery import WebhookDispatcher
from falsim.draws import Draws
from falsim.images import PNGCache, image_size
from falsim.model import (
    RUNNER_ERRORS,
    ModelInput,
    content_policy_detail,
    forced_error,
    model_validation_detail,
    parse_body,
    validate_input,
)

logger = logging.getLogger(__name__)

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
PAYLOAD_ERROR = (
    "Response payload is not JSON serializable. Either return a JSON serializable object or use "
    "the queue endpoint to retrieve the response."
)
# z of the 95th percentile of a standard normal: turns (median, p95) into a lognormal sigma.
_Z95 = 1.6448536269514722
_LAG_WINDOW = 20_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended: what the result endpoint answers and what the webhook says."""

    status_code: int
    body: bytes
    error: str | None = None
    error_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    cancelled: bool = False


class SimRequest:
    """One submitted request and every time stamp of its life (loop-monotonic seconds)."""

    __slots__ = (
        "app",
        "base_url",
        "cancel_requested",
        "completed",
        "detail",
        "due",
        "duration",
        "endpoint",
        "epoch",
        "failure",
        "handle",
        "id",
        "input",
        "key_id",
        "outcome",
        "qseq",
        "rng",
        "scheduled_start",
        "seed",
        "seq",
        "started",
        "status",
        "submitted",
        "timeout_handle",
        "webhook_attempts",
        "webhook_deliveries",
        "webhook_url",
    )

    def __init__(self, seq: int, epoch: int, rng: Draws) -> None:
        self.seq = seq
        self.epoch = epoch
        self.rng = rng
        self.id = ""
        self.app = ""
        self.endpoint = ""
        self.base_url = ""
        self.key_id = ""
        self.webhook_url: str | None = None
        self.input: ModelInput | None = None
        self.detail: list[dict[str, Any]] | None = None
        self.seed = 0
        self.status = IN_QUEUE
        self.qseq = -1
        self.submitted = 0.0
        self.scheduled_start: float | None = None
        self.started: float | None = None
        self.due: float | None = None
        self.completed: float | None = None
        self.duration = 0.0
        self.failure: str | None = None
        self.cancel_requested = False
        self.outcome: Outcome | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.timeout_handle: asyncio.TimerHandle | None = None
        self.webhook_attempts = 0
        self.webhook_deliveries = 0


class Simulator:
    """The queue state machine; call its methods on the loop thread only."""

    def __init__(
        self,
        config: SimConfig,
        dispatcher: WebhookDispatcher,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.loop = loop
        self.pngs = PNGCache(config.png_cache_bytes)
        self.base_seed = config.seed if config.seed is not None else random.getrandbits(63)
        self.epoch = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self.records: dict[str, SimRequest] = {}
        self.order: list[SimRequest] = []
        self._queue: deque[SimRequest] = deque()
        self._removed: list[int] = []
        self._next_qseq = 0
        self._dequeued = 0
        self.queued_by_app: Counter[str] = Counter()
        self.in_progress = 0
        self.max_in_progress = 0
        self._submit_rng = Draws(f"{self.base_seed}:{self.epoch}:submit")
        self.started_at = self.loop.time()
        self.wall_offset = time.time() - self.loop.time()
        self.counters: Counter[str] = Counter()
        self.submits_by_endpoint: Counter[str] = Counter()
        self.submits_by_key: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.errors_by_type: Counter[str] = Counter()
        self.payload_counts: Counter[bytes] = Counter()
        self.prompt_counts: Counter[bytes] = Counter()
        self.start_lags: deque[float] = deque(maxlen=_LAG_WINDOW)
        self.complete_lags: deque[float] = deque(maxlen=_LAG_WINDOW)

    def reset(self) -> None:
        """Forget every request and count; pending timers of the old epoch become no-ops."""
        for record in self.order:
            for handle in (record.handle, record.timeout_handle):
                if handle is not None:
                    handle.cancel()
        self.epoch += 1
        self.dispatcher.reset()
        self.pngs.clear()
        self._reset_state()

    def reconfigure(self, config: SimConfig) -> None:
        """Apply a new configuration; more concurrency starts waiting requests at once."""
        self.config = config
        self.dispatcher.config = config
        self._fill_slots(self.loop.time())

    def wall(self, mono: float | None) -> float | None:
        """A loop-monotonic time as Unix seconds."""
        return None if mono is None else mono + self.wall_offset

    def submit_fault(self) -> str | None:
        """'429' or '503' when the submit fault rates say this submit fails, else None."""
        faults = self.config.faults
        draw = self._submit_rng.random()
        if draw < faults.submit_429_rate:
            return "429"
        if draw < faults.submit_429_rate + faults.submit_503_rate:
            return "503"
        return None

    def queue_full(self, app: str, max_length: int) -> bool:
        """True when `max_length` requests of `app` already wait."""
        return self.queued_by_app[app] >= max_length

    def submit(
        self,
        *,
        endpoint: str,
        app: str,
        key_id: str,
        base_url: str,
        raw_body: bytes,
        webhook_url: str | None,
        start_timeout: float | None,
    ) -> SimRequest:
        """Accept a request: it waits in the queue or starts at once when a slot is free."""
        now = self.loop.time()
        seq = len(self.order)
        rng = Draws(f"{self.base_seed}:{self.epoch}:{seq}")
        record = SimRequest(seq, self.epoch, rng)
        record.id = _uuid4_from(rng)
        record.endpoint = endpoint
        record.app = app
        record.key_id = key_id
        record.base_url = base_url
        record.webhook_url = webhook_url
        record.submitted = now
        body, detail = parse_body(raw_body)
        if body is not None:
            model_input, errors = validate_input(body)
            record.input = model_input
            detail = errors or None
            if model_input is not None:
                self.prompt_counts[_digest(model_input.prompt.encode())] += 1
        record.detail = detail
        record.seed = (
            record.input.seed
            if record.input is not None and record.input.seed is not None
            else rng.randint(1, 2**31 - 1)
        )
        # Identical bytes, not equal JSON: a resubmission by our own client serialises alike.
        self.payload_counts[_digest(endpoint.encode() + b"\0" + raw_body)] += 1
        self.records[record.id] = record
        self.order.append(record)
        self.counters["submits"] += 1
        self.submits_by_endpoint[endpoint] += 1
        self.submits_by_key[key_id] += 1
        record.qseq = self._next_qseq
        self._next_qseq += 1
        self._queue.append(record)
        self.queued_by_app[app] += 1
        if start_timeout is not None and self.config.time_scale > 0:
            record.timeout_handle = self.loop.call_at(
                now + start_timeout * self.config.time_scale, self._start_timeout, record
            )
        self._fill_slots(now)
        return record

    def queue_position(self, record: SimRequest) -> int:
        """How many live requests wait ahead of `record` (0-indexed, like fal)."""
        if record.status != IN_QUEUE:
            return 0
        removed = bisect.bisect_left(self._removed, record.qseq) - bisect.bisect_left(
            self._removed, self._dequeued
        )
        return max(0, record.qseq - self._dequeued - removed)

    def _dequeue_removed(self, record: SimRequest) -> None:
        """Take a waiting request out of the line (cancel, start timeout)."""
        record.status = COMPLETED
        self.queued_by_app[record.app] -= 1
        bisect.insort(self._removed, record.qseq)
        if len(self._removed) > 4096:
            self._removed = self._removed[bisect.bisect_left(self._removed, self._dequeued) :]

    def _fill_slots(self, scheduled_start: float) -> None:
        """Start waiting requests while slots are free, in FIFO order."""
        while self.in_progress < self.config.concurrency and self._queue:
            record = self._queue.popleft()
            self._dequeued = record.qseq + 1
            if record.status != IN_QUEUE:
                continue
            self.queued_by_app[record.app] -= 1
            self._start(record, max(scheduled_start, record.submitted))

    def _start(self, record: SimRequest, scheduled_start: float) -> None:
        now = self.loop.time()
        record.status = IN_PROGRESS
        record.started = now
        record.scheduled_start = scheduled_start
        self.start_lags.append(now - scheduled_start)
        if record.timeout_handle is not None:
            record.timeout_handle.cancel()
            record.timeout_handle = None
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        record.failure = self._draw_failure(record)
        record.duration = self._draw_duration(record)
        record.due = now + record.duration * self.config.time_scale
        record.handle = self.loop.call_at(record.due, self._complete, record)

    def _draw_failure(self, record: SimRequest) -> str | None:
        if record.detail is not None:
            return "invalid"
        assert record.input is not None
        forced = forced_error(record.input.prompt)
        if forced is not None and (forced in RUNNER_ERRORS or forced in _MODEL_422):
            return forced
        faults = self.config.faults
        if record.rng.random() < faults.model_error_rate:
            return record.rng.choice(faults.model_error_types)
        return None

    def _draw_duration(self, record: SimRequest) -> float:
        """Simulated seconds of generation (before time_scale)."""
        if record.input is None or record.failure == "invalid":
            return 0.0
        cfg = self.config
        median, p95 = (
            (cfg.median_1k, cfg.p95_1k)
            if record.input.resolution == "1K"
            else (cfg.median_2k, cfg.p95_2k)
        )
        if cfg.latency == "fixed" or median <= 0 or p95 <= median:
            seconds = median
        else:
            sigma = (math.log(p95) - math.log(median)) / _Z95
            seconds = record.rng.lognormvariate(math.log(median), sigma)
        if record.input.reasoning == "high":
            seconds *= cfg.reasoning_high_factor
        if record.failure in RUNNER_ERRORS:
            # Runners tend to fail part-way through.
            seconds *= record.rng.uniform(0.1, 1.0)
        return seconds

    def _complete(self, record: SimRequest) -> None:
        if record.epoch != self.epoch or record.status != IN_PROGRESS:
            return
        now = self.loop.time()
        assert record.due is not None
        self.complete_lags.append(now - record.due)
        self.in_progress -= 1
        record.handle = None
        self._finish(record, self._outcome(record))
        self._fill_slots(record.due)

    def _start_timeout(self, record: SimRequest) -> None:
        if record.epoch != self.epoch or record.status != IN_QUEUE:
            return
        record.timeout_handle = None
        self._dequeue_removed(record)
        body = {"detail": "Request timed out", "error_type": "request_timeout"}
        self._finish(
            record,
            _error_outcome(
                504,
                body,
                "request_timeout",
                (("X-Fal-Request-Timeout-Type", "user"),),
            ),
        )

    def cancel(self, record: SimRequest) -> str:
        """Cancel: 'requested' (queued or running) or 'completed' (too late)."""
        if record.status == COMPLETED:
            return "completed"
        record.cancel_requested = True
        self.counters["cancel_requests"] += 1
        if record.status == IN_QUEUE:
            self._dequeue_removed(record)
            self._finish(record, _cancelled_outcome())
        elif self.config.abort_on_cancel:
            if record.handle is not None:
                record.handle.cancel()
                record.handle = None
            self.in_progress -= 1
            self._finish(record, _cancelled_outcome())
            self._fill_slots(self.loop.time())
        # Otherwise the runner got the signal and ignores it: the request finishes as scheduled.
        return "requested"

    def _outcome(self, record: SimRequest) -> Outcome:
        failure = record.failure
        if failure == "invalid":
            assert record.detail is not None
            return _error_outcome(422, {"detail": record.detail}, record.detail[0]["type"], ())
        assert record.input is not None
        prompt = record.input.prompt
        if failure == "content_policy_violation":
            return _error_outcome(
                422,
                {"detail": content_policy_detail(prompt)},
                failure,
                (("X-Fal-Error-Type", failure),),
            )
        if failure == "validation":
            detail = model_validation_detail(prompt)
            return _error_outcome(422, {"detail": detail}, detail[0]["type"], ())
        if failure is not None:
            code, message = RUNNER_ERRORS[failure]
            return _error_outcome(
                code,
                {"detail": message, "error_type": failure},
                failure,
                (("X-Fal-Error-Type", failure),),
            )
        return Outcome(200, json.dumps(self.result_body(record)).encode())

    def result_body(self, record: SimRequest) -> dict[str, Any]:
        """The model output of a successful request (renders its PNG to know the file size)."""
        assert record.input is not None
        inp = record.input
        width, height = image_size(inp.aspect_ratio, inp.resolution)
        png = self.pngs.get(inp.prompt, record.seed, inp.aspect_ratio, inp.resolution)
        file_name = f"{record.id}.png"
        return {
            "images": [
                {
                    "url": f"{record.base_url}/files/{record.id}/{file_name}",
                    "width": width,
                    "height": height,
                    "content_type": "image/png",
                    "file_name": file_name,
                    "file_size": len(png),
                }
            ],
            "seed": record.seed,
        }

    def png(self, record: SimRequest) -> bytes | None:
        """The PNG of a successfully completed request, None otherwise."""
        if record.outcome is None or record.outcome.status_code != 200 or record.input is None:
            return None
        inp = record.input
        return self.pngs.get(inp.prompt, record.seed, inp.aspect_ratio, inp.resolution)

    def _finish(self, record: SimRequest, outcome: Outcome) -> None:
        record.status = COMPLETED
        record.completed = self.loop.time()
        record.outcome = outcome
        if outcome.cancelled:
            self.counters["cancelled"] += 1
        elif outcome.error_type is not None:
            self.counters["completed_error"] += 1
            self.errors_by_type[outcome.error_type] += 1
        else:
            self.counters["completed_ok"] += 1
        if record.webhook_url and (not outcome.cancelled or self.config.webhook_on_cancel):
            self._send_webhook(record, outcome)

    def _send_webhook(self, record: SimRequest, outcome: Outcome) -> None:
        assert record.webhook_url is not None
        message: dict[str, Any] = {"request_id": record.id, "gateway_request_id": record.id}
        if outcome.status_code == 200:
            message["status"] = "OK"
            if record.rng.random() < self.config.faults.webhook_null_payload_rate:
                self.counters["null_payloads"] += 1
                message["payload"] = None
                message["payload_error"] = PAYLOAD_ERROR
            else:
                message["payload"] = json.loads(outcome.body)
        else:
            message["status"] = "ERROR"
            message["error"] = f"Invalid status code: {outcome.status_code}"
            message["payload"] = json.loads(outcome.body)
        self.dispatcher.send(record, record.webhook_url, json.dumps(message).encode())

    def logs(self, record: SimRequest) -> list[dict[str, Any]]:
        """The runner's log lines so far, derived from the request's schedule."""
        if record.started is None:
            return []
        now = self.loop.time()
        end = record.completed if record.completed is not None else now
        span = max(0.0, (record.due or end) - record.started)
        lines = [(record.started, "Starting generation")]
        steps = 4
        for step in range(1, steps + 1):
            at = record.started + span * step / (steps + 1)
            if at <= end:
                lines.append((at, f"Step {step}/{steps}"))
        if record.completed is not None:
            lines.append((record.completed, "Generation finished"))
        return [
            {
                "message": message,
                "level": "INFO",
                "source": "user",
                "timestamp": _iso(at + self.wall_offset),
            }
            for at, message in lines
        ]

    def lag_summary(self) -> dict[str, dict[str, float]]:
        """p50/p99/max of recent start and completion lags behind the schedule, in seconds."""
        return {"start": _summary(self.start_lags), "complete": _summary(self.complete_lags)}

    def by_status(self) -> dict[str, int]:
        """How many requests are in each queue status."""
        queued = sum(self.queued_by_app.values())
        return {
            IN_QUEUE: queued,
            IN_PROGRESS: self.in_progress,
            COMPLETED: len(self.order) - queued - self.in_progress,
        }


_MODEL_422 = frozenset({"content_policy_violation", "validation"})


def _error_outcome(
    code: int, body: dict[str, Any], error_type: str, headers: tuple[tuple[str, str], ...]
) -> Outcome:
    detail = body["detail"]
    error = detail if isinstance(detail, str) else f"Invalid status code: {code}"
    return Outcome(code, json.dumps(body).encode(), error, error_type, headers)


def _cancelled_outcome() -> Outcome:
    # *unconfirmed*: what fal's result endpoint answers for a cancelled request; 499 fits its types.
    body = {"detail": "Request cancelled by the client", "error_type": "client_cancelled"}
    return Outcome(
        499,
        json.dumps(body).encode(),
        body["detail"],
        "client_cancelled",
        (("X-Fal-Error-Type", "client_cancelled"),),
        cancelled=True,
    )


def _uuid4_from(rng: Draws) -> str:
    return str(uuid.UUID(int=rng.bits(128), version=4))


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=12).digest()


def _iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _summary(values: deque[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }
