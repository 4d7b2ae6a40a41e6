"""The HTTP face of falsim: fal's queue routes, files, the JWKS, and `/_sim/*` controls."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from nacl.signing import SigningKey

from fal_queue.urls import APP_NAMESPACES
from fal_queue.webhooks import jwk_from_verify_key
from falsim.engine import COMPLETED, IN_PROGRESS, IN_QUEUE, SimRequest, Simulator
from falsim.exceptions import SimConfigError

logger = logging.getLogger(__name__)

NO_USER = {"detail": "No user found for Key ID and Secret"}
_JSON = "application/json"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type=_JSON, headers=headers
    )


def _split_app(parts: list[str]) -> tuple[str, list[str]] | None:
    """(owner/alias, the rest) of a queue path; the app spans one more segment in namespaces."""
    width = 3 if parts and parts[0] in APP_NAMESPACES else 2
    if len(parts) < width:
        return None
    return "/".join(parts[:width]), parts[width:]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class QueueAPI:
    """Request handlers bound to one simulator."""

    def __init__(self, sim: Simulator, signing_key: SigningKey) -> None:
        self.sim = sim
        self.jwks = {"keys": [jwk_from_verify_key(signing_key.verify_key)]}

    def _key_id(self, request: web.Request) -> str | None:
        """The key id of a valid `Authorization: Key id:secret` header, else None."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "key" or ":" not in credential:
            return None
        key_id, _, secret = credential.partition(":")
        if not key_id or not secret:
            return None
        wanted = self.sim.config.key
        if wanted is not None and credential != wanted:
            return None
        return key_id

    def _base_url(self, request: web.Request) -> str:
        if self.sim.config.public_url:
            return self.sim.config.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    def _urls(self, record: SimRequest) -> dict[str, str]:
        response_url = f"{record.base_url}/{record.app}/requests/{record.id}"
        return {
            "response_url": response_url,
            "status_url": f"{response_url}/status",
            "cancel_url": f"{response_url}/cancel",
        }

    async def queue_post(self, request: web.Request) -> web.Response:
        """Submit: POST /{endpoint_id}[?fal_webhook=...]."""
        key_id = self._key_id(request)
        if key_id is None:
            self.sim.rejected["401"] += 1
            return _json(NO_USER, 401)
        parts = [p for p in request.match_info["tail"].split("/") if p]
        split = _split_app(parts)
        if split is None:
            self.sim.rejected["404"] += 1
            return _json({"detail": "Application not found"}, 404)
        app, _ = split
        fault = self.sim.submit_fault()
        if fault == "429":
            self.sim.rejected["429"] += 1
            retry_after = str(self.sim.config.faults.retry_after_seconds)
            return _json(
                {"detail": "Rate limit exceeded"},
                429,
                {"Retry-After": retry_after, "X-Fal-Error-Type": "rate_limited"},
            )
        if fault == "503":
            self.sim.rejected["503"] += 1
            return _json(
                {"detail": "Service temporarily unavailable", "error_type": "internal_error"},
                503,
                {"X-Fal-Error-Type": "internal_error"},
            )
        max_length = request.query.get("fal_max_queue_length")
        if max_length is not None:
            try:
                limit = int(max_length)
            except ValueError:
                return _json({"detail": "fal_max_queue_length must be an integer"}, 400)
            if self.sim.queue_full(app, limit):
                self.sim.rejected["queue_full"] += 1
                # *unconfirmed* body: fal documents only the 429 status for a full queue.
                return _json({"detail": "Queue is full"}, 429, {"X-Fal-Error-Type": "queue_full"})
        start_timeout: float | None = None
        header = request.headers.get("X-Fal-Request-Timeout")
        if header:
            try:
                start_timeout = float(header)
            except ValueError:
                return _json({"detail": "X-Fal-Request-Timeout must be a number"}, 400)
        raw = await request.read()
        record = self.sim.submit(
            endpoint="/".join(parts),
            app=app,
            key_id=key_id,
            base_url=self._base_url(request),
            raw_body=raw,
            webhook_url=request.query.get("fal_webhook") or None,
            start_timeout=start_timeout,
        )
        body = {
            # fal's submit answer always says IN_QUEUE, even when a slot was free.
            "status": IN_QUEUE,
            "request_id": record.id,
            **self._urls(record),
            "queue_position": self.sim.queue_position(record),
            "gateway_request_id": record.id,
        }
        return _json(body, 200, {"x-fal-request-id": record.id})

    def _find(self, request: web.Request) -> tuple[SimRequest | None, str]:
        """The record a status/result/cancel path names, and the path's action."""
        parts = [p for p in request.match_info["tail"].split("/") if p]
        split = _split_app(parts)
        if split is None:
            return None, ""
        app, rest = split
        if len(rest) < 2 or rest[0] != "requests" or len(rest) > 3:
            return None, ""
        action = rest[2] if len(rest) == 3 else "result"
        record = self.sim.records.get(rest[1])
        if record is None or record.app != app:
            return None, action
        return record, action

    async def queue_get(self, request: web.Request) -> web.Response:
        """Status (`.../status`) or result (`.../requests/{id}`)."""
        if self._key_id(request) is None:
            return _json(NO_USER, 401)
        record, action = self._find(request)
        if action == "status":
            if record is None:
                return _json({"detail": "Request not found"}, 404)
            return self._status(request, record)
        if action == "result":
            if record is None:
                return _json({"detail": "Request not found"}, 404)
            return self._result(record)
        return _json({"detail": "Not Found"}, 404)

    def _status(self, request: web.Request, record: SimRequest) -> web.Response:
        headers = {"x-fal-request-id": record.id}
        response_url = self._urls(record)["response_url"]
        with_logs = _truthy(request.query.get("logs"))
        body: dict[str, Any] = {
            "status": record.status,
            "request_id": record.id,
            "response_url": response_url,
        }
        if record.status == IN_QUEUE:
            body["queue_position"] = self.sim.queue_position(record)
            return _json(body, 202, headers)
        body["logs"] = self.sim.logs(record) if with_logs else None
        if record.status == IN_PROGRESS:
            return _json(body, 202, headers)
        outcome = record.outcome
        assert outcome is not None
        inference = 0.0
        if record.started is not None and record.completed is not None:
            inference = round(record.duration, 3)
        body["metrics"] = {"inference_time": inference} if record.started is not None else {}
        if outcome.error is not None:
            body["error"] = outcome.error
            body["error_type"] = outcome.error_type
        return _json(body, 200, headers)

    def _result(self, record: SimRequest) -> web.Response:
        headers = {"x-fal-request-id": record.id}
        if record.status != COMPLETED or record.outcome is None:
            return _json({"detail": "Request is still in progress"}, 400, headers)
        outcome = record.outcome
        headers.update(outcome.headers)
        if outcome.status_code == 200:
            headers["X-Fal-Billable-Units"] = "1"
        return web.Response(
            body=outcome.body, status=outcome.status_code, content_type=_JSON, headers=headers
        )

    async def queue_put(self, request: web.Request) -> web.Response:
        """Cancel: PUT .../requests/{id}/cancel."""
        if self._key_id(request) is None:
            return _json(NO_USER, 401)
        record, action = self._find(request)
        if action != "cancel":
            return _json({"detail": "Not Found"}, 404)
        if record is None:
            return _json({"status": "NOT_FOUND"}, 404)
        headers = {"x-fal-request-id": record.id}
        if self.sim.cancel(record) == "completed":
            return _json({"status": "ALREADY_COMPLETED"}, 400, headers)
        return _json({"status": "CANCELLATION_REQUESTED"}, 202, headers)

    async def file(self, request: web.Request) -> web.Response:
        """GET /files/{request_id}/{name}: the PNG of a completed request."""
        record = self.sim.records.get(request.match_info["request_id"])
        png = self.sim.png(record) if record is not None else None
        if record is None or png is None or request.match_info["name"] != f"{record.id}.png":
            return _json({"detail": "File not found"}, 404)
        return web.Response(
            body=png,
            content_type="image/png",
            headers={"Cache-Control": "public, max-age=604800"},
        )

    async def jwks_doc(self, request: web.Request) -> web.Response:
        """GET /.well-known/jwks.json: the key set the webhooks are signed with."""
        return _json(self.jwks)

    async def health(self, request: web.Request) -> web.Response:
        """GET /healthz."""
        return _json({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        """GET /_sim/stats: counters, queue state, webhook delivery and schedule lag."""
        return _json(sim_stats(self.sim))

    async def requests(self, request: web.Request) -> web.Response:
        """GET /_sim/requests?offset=&limit=: per-request times in submit order."""
        try:
            offset = max(0, int(request.query.get("offset", "0")))
            limit = min(10_000, max(1, int(request.query.get("limit", "1000"))))
        except ValueError:
            return _json({"detail": "offset and limit must be integers"}, 400)
        page = self.sim.order[offset : offset + limit]
        return _json(
            {
                "total": len(self.sim.order),
                "offset": offset,
                "requests": [request_row(self.sim, r) for r in page],
            }
        )

    async def get_config(self, request: web.Request) -> web.Response:
        """GET /_sim/config."""
        return _json(self.sim.config.public())

    async def post_config(self, request: web.Request) -> web.Response:
        """POST /_sim/config: change settings and faults while running."""
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise SimConfigError("body must be a JSON object")
            config = self.sim.config.updated(changes)
        except (SimConfigError, ValueError) as exc:
            return _json({"detail": str(exc)}, 400)
        self.sim.reconfigure(config)
        logger.info("configuration changed: %s", sorted(changes))
        return _json(config.public())

    async def reset(self, request: web.Request) -> web.Response:
        """POST /_sim/reset: forget every request and count."""
        self.sim.reset()
        return _json({"ok": True})


def sim_stats(sim: Simulator) -> dict[str, Any]:
    """Every counter of the simulator as JSON."""
    resubmitted = [count for count in sim.payload_counts.values() if count > 1]
    prompts_again = sum(1 for count in sim.prompt_counts.values() if count > 1)
    return {
        "uptime": sim.loop.time() - sim.started_at,
        "submits": sim.counters["submits"],
        "submits_by_endpoint": dict(sim.submits_by_endpoint),
        "submits_by_key": dict(sim.submits_by_key),
        "rejected": dict(sim.rejected),
        "requests_by_status": sim.by_status(),
        "completed_ok": sim.counters["completed_ok"],
        "completed_error": sim.counters["completed_error"],
        "cancelled": sim.counters["cancelled"],
        "cancel_requests": sim.counters["cancel_requests"],
        "errors_by_type": dict(sim.errors_by_type),
        "in_progress": sim.in_progress,
        "max_in_progress": sim.max_in_progress,
        "concurrency": sim.config.concurrency,
        "payloads": {
            "distinct": len(sim.payload_counts),
            "submitted_more_than_once": len(resubmitted),
            "extra_submits": sum(resubmitted) - len(resubmitted),
            "max_submits": max(sim.payload_counts.values(), default=0),
        },
        "prompts": {
            "distinct": len(sim.prompt_counts),
            "submitted_more_than_once": prompts_again,
        },
        "webhooks": {
            "attempts": sim.dispatcher.counters["attempts"],
            "delivered": sim.dispatcher.counters["delivered"],
            "failed_attempts": sim.dispatcher.counters["failed_attempts"],
            "timeouts": sim.dispatcher.counters["timeouts"],
            "exhausted": sim.dispatcher.counters["exhausted"],
            "dropped": sim.dispatcher.counters["dropped"],
            "duplicates_sent": sim.dispatcher.counters["duplicates_sent"],
            "delayed": sim.dispatcher.counters["delayed"],
            "slow": sim.dispatcher.counters["slow"],
            "null_payloads": sim.counters["null_payloads"],
            "pending": sim.dispatcher.pending,
        },
        "schedule_lag": sim.lag_summary(),
        "png": {"cache_hits": sim.pngs.hits, "rendered": sim.pngs.misses},
    }


def request_row(sim: Simulator, record: SimRequest) -> dict[str, Any]:
    """One request's life as JSON (Unix seconds)."""
    outcome = record.outcome
    return {
        "request_id": record.id,
        "endpoint": record.endpoint,
        "status": record.status,
        "resolution": record.input.resolution if record.input else None,
        "reasoning": record.input.reasoning if record.input else None,
        "submitted_at": sim.wall(record.submitted),
        "scheduled_start": sim.wall(record.scheduled_start),
        "started_at": sim.wall(record.started),
        "due_at": sim.wall(record.due),
        "completed_at": sim.wall(record.completed),
        "duration": record.duration,
        "status_code": outcome.status_code if outcome else None,
        "error_type": outcome.error_type if outcome else None,
        "cancelled": outcome.cancelled if outcome else False,
        "webhook_attempts": record.webhook_attempts,
        "webhook_deliveries": record.webhook_deliveries,
    }


def create_app(sim: Simulator, signing_key: SigningKey) -> web.Application:
    """The aiohttp application serving `sim`."""
    api = QueueAPI(sim, signing_key)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/.well-known/jwks.json", api.jwks_doc)
    app.router.add_get("/healthz", api.health)
    app.router.add_get("/files/{request_id}/{name}", api.file)
    app.router.add_get("/_sim/stats", api.stats)
    app.router.add_get("/_sim/requests", api.requests)
    app.router.add_get("/_sim/config", api.get_config)
    app.router.add_post("/_sim/config", api.post_config)
    app.router.add_post("/_sim/reset", api.reset)
    app.router.add_post("/{tail:.+}", api.queue_post)
    app.router.add_get("/{tail:.+}", api.queue_get)
    app.router.add_put("/{tail:.+}", api.queue_put)
    return app
