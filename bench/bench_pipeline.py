"""Run the real pipeline against falsim in webhook mode; report slot fullness and refill latency.

    .venv/bin/python bench/bench_pipeline.py --jobs 1000 --cap 16 --time-scale 0.05

Processes: falsim (in this process, concurrency 2 x cap so the cap is ours), `imagine receiver`,
a submit worker, an archive/notify worker and `imagine beat`, on a fresh PostgreSQL database and a
Redis database (BENCH_REDIS_URL, default db 12, flushed). Fullness is busy slot-seconds over
cap x window; a refill gap is the time from a completion at fal to the next start there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get(
    "BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def main() -> None:
    """Set up, run one batch, print the numbers as JSON."""
    import redis
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from falsim.server import SimServer
    from models import migrate
    from tests.e2e.test_pipeline import mixed_rows
    from tests.fixtures.falsim import TEST_KEY
    from tests.fixtures.pipeline import Pipeline, slot_metrics

    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=16)
    parser.add_argument("--time-scale", type=float, default=0.05)
    parser.add_argument("--resolution", default="1K")
    args = parser.parse_args()

    name = f"bench_pipeline_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    redis.Redis.from_url(REDIS_URL).flushdb()
    sim = SimServer(
        key=TEST_KEY, seed=1, concurrency=2 * args.cap, time_scale=args.time_scale
    ).start()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if k.upper() not in {"WEBHOOK_BASE_URL", "BROKER_URL"}
        }
        env.update(
            DATABASE_URL=url, REDIS_URL=REDIS_URL, FAL_QUEUE_URL=sim.base_url,
            FAL_JWKS_URL=sim.jwks_url, FAL_KEY=TEST_KEY, ARCHIVE_DIR=str(Path(tmp) / "archive"),
            MAX_IN_FLIGHT=str(args.cap),
            RECONCILE_INTERVAL="1", LOG_LEVEL="WARNING",
        )  # fmt: skip
        pipeline = Pipeline(Path(tmp), url, REDIS_URL, sim, env)
        try:
            pipeline.env["WEBHOOK_BASE_URL"] = pipeline.start_receiver()
            pipeline.start_worker("submitter", queues="submit,maintenance")
            pipeline.start_worker("archiver", queues="archive,notify")
            pipeline.start_beat()
            time.sleep(3)  # let the workers connect before the clock starts
            rows = [dict(r, resolution=args.resolution) for r in mixed_rows(args.jobs)]
            started = time.monotonic()
            result = pipeline.enqueue_rows(rows)
            counts = pipeline.wait_finished(result["batch_id"], timeout=3600)
            elapsed = time.monotonic() - started
            metrics = slot_metrics(sim.requests(), args.cap)
            stats = sim.stats()
        finally:
            pipeline.stop_all()
            sim.stop()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            redis.Redis.from_url(REDIS_URL).flushdb()
    print(json.dumps({
        "cpus": os.cpu_count(), "jobs": args.jobs, "cap": args.cap, "time_scale": args.time_scale,
        "counts": counts, "seconds": round(elapsed, 1),
        "jobs_per_second": round(args.jobs / elapsed, 1),
        "max_in_progress": stats["max_in_progress"], "slot_fullness": round(metrics.fullness, 3),
        "refill_median_ms": round(metrics.refill_median * 1000, 1),
        "refill_p95_ms": round(metrics.refill_p95 * 1000, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
