"""Webhook ingest latency: verify + record + apply + commit, in-process and over loopback HTTP.

    .venv/bin/python bench/bench_receiver.py [--jobs 2000] [--threads 8] [--database-url URL]

Creates a throwaway PostgreSQL database (default server: 127.0.0.1:5432, user postgres), fills it
with SUBMITTED jobs, and delivers one correctly signed OK webhook per job (ED25519 verified against
a JWKS served in-process). The post-commit hand-off is a no-op, so the numbers are the receiver's
own work; publishing to Redis adds about a millisecond. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from nacl.signing import SigningKey
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fal_queue.webhooks import sign_webhook
from imagine.settings import Settings
from models import migrate
from models.db import make_engine
from tests.fixtures.receiver import JWKSServer, add_job, ok_body
from webhook_receiver import create_app

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class NoDispatch:
    """Post-commit work dropped: the benchmark measures ingestion alone."""

    def jobs_finished(self, job_ids: Sequence[uuid.UUID]) -> None:
        """Nothing."""

    def fetch_result(self, job_id: uuid.UUID) -> None:
        """Nothing."""


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": round(pick(0.50) * 1000, 2),
        "p99_ms": round(pick(0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--database-url", default=ADMIN_URL, help="admin URL of the server")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    name = f"imagine_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.database_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        engine = make_engine(url, pool_size=args.threads + 2)
        sessions = sessionmaker(engine, expire_on_commit=False)
        key = SigningKey.generate()
        settings = Settings(database_url=url, api_token=None)
        app = create_app(
            settings, dispatch=NoDispatch(), jwks=JWKSServer([key]).cache(), sessions=sessions
        )
        requests = []
        for n in range(2 * args.jobs):
            request_id = f"bench-{n}"
            add_job(sessions, request_id=request_id)
            body = ok_body(request_id)
            headers = {"Content-Type": "application/json"}
            headers.update(sign_webhook(key, request_id, "bench", body))
            requests.append((body, headers))

        client = app.test_client()
        in_process = []
        for body, headers in requests[: args.jobs]:
            start = time.perf_counter()
            response = client.post("/webhooks/fal", data=body, headers=headers)
            in_process.append(time.perf_counter() - start)
            assert response.status_code == 200 and response.json["outcome"] == "applied"

        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}/webhooks/fal"
        limits = httpx.Limits(max_connections=args.threads)
        over_http: list[float] = []
        lock = threading.Lock()
        with httpx.Client(limits=limits, timeout=30) as http:

            def send(item: tuple[bytes, dict[str, str]]) -> None:
                start = time.perf_counter()
                response = http.post(base, content=item[0], headers=item[1])
                elapsed = time.perf_counter() - start
                assert response.status_code == 200
                with lock:
                    over_http.append(elapsed)

            wall = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(send, requests[args.jobs :]))
            wall = time.perf_counter() - wall
        server.shutdown()
        engine.dispose()
        print(
            json.dumps(
                {
                    "deliveries": args.jobs,
                    "in_process_sequential": percentiles(in_process),
                    "http_concurrent": {
                        "threads": args.threads,
                        "per_second": round(args.jobs / wall, 1),
                        **percentiles(over_http),
                    },
                },
                indent=2,
            )
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
