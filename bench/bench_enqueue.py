"""Enqueue a large prompts file against PostgreSQL and SQLite; report rate and peak RSS.

    .venv/bin/python bench/bench_enqueue.py --lines 1000000
    .venv/bin/python bench/bench_enqueue.py --lines 100000 --no-publish

Each backend runs in a child process (so its peak RSS is its own) with a fresh database; with
publishing on, job ids go to a Redis database (BENCH_REDIS_URL, default db 12), flushed after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get(
    "BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def child(path: str, database_url: str, publish: bool) -> None:
    """Run one enqueue in this process and print its numbers."""
    from worker.enqueue import Defaults, enqueue_file

    started = time.perf_counter()
    result = enqueue_file(
        path, defaults=Defaults(resolution="1K"), publish=publish, database_url=database_url
    )
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "jobs": result.jobs,
                "seconds": round(elapsed, 1),
                "jobs_per_second": round(result.jobs / elapsed),
                "peak_rss_mib": round(peak_kib / 1024),
            }
        )
    )


def run(backend: str, path: Path, publish: bool, workdir: Path) -> dict[str, object]:
    """Prepare a fresh database for `backend` and time the enqueue in a child process."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from models import migrate

    if backend == "postgresql":
        name = f"bench_enqueue_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    migrate.upgrade(url)
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "LOG_LEVEL": "WARNING"}
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(path), url, "1" if publish else "0"],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        numbers: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if backend == "postgresql":
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        if publish:
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
    return {"backend": backend, "publish": publish, **numbers}


def main() -> None:
    """Parse arguments, write the prompts file, run each backend."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--no-publish", action="store_true")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2] == "1")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prompts.txt"
        with path.open("w") as handle:
            for i in range(args.lines):
                handle.write(f"prompt {i}: a lighthouse on a cliff at dusk, oil painting\n")
        for backend in args.backends.split(","):
            print(
                json.dumps(
                    {
                        "lines": args.lines,
                        "cpus": os.cpu_count(),
                        **run(backend, path, not args.no_publish, Path(tmp)),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
