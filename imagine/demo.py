"""`imagine demo`: the whole system on one machine with nothing installed but this project.

It runs the real parts, not stand-ins: the fal simulator (in a thread of this process), the
receiver and a Celery worker with the reconciler schedule (as `imagine` subprocesses), a SQLite
database and an embedded SQLite broker, unless DATABASE_URL / REDIS_URL say otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from imagine.settings import Settings, get_settings

SAMPLE = Path(__file__).resolve().parent / "samples" / "demo_prompts.jsonl"
DEMO_KEY = "demo-key:not-a-secret"  # falsim accepts any key; this one is never fal's
IMAGINE = [sys.executable, "-c", "from imagine.cli import main; main()"]
QUIET_LOGGERS = ("alembic", "httpx", "falsim", "worker.enqueue")


class DemoError(Exception):
    """The demo cannot run as asked; the message says why and what to do."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Processes:
    """Child processes started by the demo, stopped together."""

    workdir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> None:
        """Start one `imagine` subcommand, its output in `<workdir>/<name>.log`."""
        log = (self.workdir / f"{name}.log").open("ab")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(
            [*IMAGINE, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def check_alive(self) -> None:
        """Raise when a child died; its log says why."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DemoError(
                    f"the {name} exited with code {proc.returncode}; "
                    f"see {self.workdir / (name + '.log')}"
                )

    def stop(self) -> None:
        """TERM every child, then KILL what is still running after a grace period."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self.logs:
            log.close()


@dataclass(frozen=True)
class DemoPlan:
    """Where the demo's data lives and what it talks to."""

    workdir: Path
    env: dict[str, str]
    database_url: str
    broker_url: str
    real: bool


def plan(settings: Settings, *, real: bool, workdir: Path) -> DemoPlan:
    """Decide the database, broker and fal endpoint; refuse to spend money by accident."""
    if settings.fal_key is not None and not real:
        raise DemoError(
            "FAL_KEY is set, so this demo could spend money on fal.ai. Pass --real to generate "
            "on fal for real, or unset FAL_KEY to run against the bundled simulator."
        )
    if real and settings.fal_key is None:
        raise DemoError("--real needs FAL_KEY (key_id:key_secret) in the environment or .env.")
    explicit = settings.model_fields_set
    database_url = (
        settings.database_url
        if "database_url" in explicit
        else f"sqlite:///{(workdir / 'imagine.sqlite3').resolve()}"
    )
    if "broker_url" in explicit and settings.broker_url:
        broker_url = settings.broker_url
    elif "redis_url" in explicit:
        broker_url = settings.redis_url
    else:
        # No Redis needed: Celery's SQLAlchemy transport keeps the queue in a SQLite file.
        broker_url = f"sqla+sqlite:///{(workdir / 'broker.sqlite3').resolve()}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": broker_url,
        "ARCHIVE_DIR": str((workdir / "archive").resolve()),
        "PYTHONUNBUFFERED": "1",
    }
    if not real:
        env["FAL_KEY"] = DEMO_KEY
        env.setdefault("MAX_IN_FLIGHT", "8")
        # Fast polling makes the demo finish even if a webhook were lost.
        env.setdefault("POLL_AFTER_SECONDS", "10")
        env.setdefault("RECONCILE_INTERVAL", "2")
    return DemoPlan(workdir, env, database_url, broker_url, real)


def _wait_http(url: str, procs: Processes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise DemoError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """This process's own settings follow the plan while the demo runs."""
    saved = dict(os.environ)
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def run_demo(
    console: Console,
    *,
    real: bool = False,
    serve: bool = False,
    prompts: Path = SAMPLE,
    timeout: float = 120.0,
    workdir: Path = Path("var/demo"),
) -> int:
    """Run the demo end to end; returns the process exit code."""
    demo = plan(get_settings(), real=real, workdir=workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in QUIET_LOGGERS:  # the progress bar and the table tell the story
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.monotonic()
    with ExitStack() as stack:
        stack.enter_context(_environment(demo.env))
        from models import migrate

        console.print(f"[bold]database[/] {_safe_url(demo.database_url)}")
        console.print(f"[bold]broker[/]   {_safe_url(demo.broker_url)}")
        migrate.upgrade(demo.database_url)
        if not real:
            from falsim.server import SimServer

            sim = stack.enter_context(
                SimServer(concurrency=8, time_scale=0.25, webhook_timeout=5.0, seed=None)
            )
            os.environ.update({"FAL_QUEUE_URL": sim.base_url, "FAL_JWKS_URL": sim.jwks_url})
            console.print(f"[bold]falsim[/]   {sim.base_url} (fal-compatible simulator)")
        receiver_port = _free_port()
        receiver_url = f"http://127.0.0.1:{receiver_port}"
        if not real:
            # With real fal, WEBHOOK_BASE_URL stays as configured: unset means polling mode.
            os.environ["WEBHOOK_BASE_URL"] = receiver_url
        get_settings.cache_clear()
        procs = Processes(workdir, dict(os.environ))
        stack.callback(procs.stop)
        procs.start("receiver", "receiver", "--host", "127.0.0.1", "--port", str(receiver_port))
        node = f"demo-{uuid.uuid4().hex[:6]}@%h"
        procs.start("worker", "worker", "--concurrency", "8", "--beat", "-n", node)
        _wait_http(f"{receiver_url}/healthz", procs)
        console.print(f"[bold]receiver[/] {receiver_url} (webhooks, API, gallery)")

        from worker.enqueue import enqueue_file

        result = enqueue_file(prompts, name=f"demo {time.strftime('%Y-%m-%d %H:%M:%S')}")
        batch_id = result.batch_id
        if batch_id is None:
            raise DemoError(f"nothing was enqueued from {prompts}")
        console.print(f"enqueued {result.jobs} prompts as batch [bold]{batch_id}[/]")
        summary = _follow(console, procs, batch_id, result.jobs, timeout)
        _print_summary(console, batch_id)
        elapsed = time.monotonic() - started
        console.print(
            f"\n{summary['counts']['COMPLETED']} completed, {summary['counts']['FAILED']} failed "
            f"in {elapsed:.1f} s. Gallery: [bold]{receiver_url}/batches/{batch_id}[/]"
        )
        if serve:
            console.print("Serving the gallery; press Ctrl-C to stop.")
            try:
                while True:
                    procs.check_alive()
                    time.sleep(1)
            except KeyboardInterrupt:
                console.print("stopping")
        ok = summary["counts"]["COMPLETED"] + summary["counts"]["FAILED"] == result.jobs
        return 0 if ok else 1


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url.removeprefix("sqla+")).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def _follow(
    console: Console, procs: Processes, batch_id: uuid.UUID, total: int, timeout: float
) -> dict[str, Any]:
    """A live progress bar until every job is terminal and every image archived."""
    from models.db import session_scope
    from models.queries import batch_summary

    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        done_task = progress.add_task("generated", total=total)
        archived_task = progress.add_task("archived", total=total)
        while True:
            procs.check_alive()
            with session_scope() as session:
                summary = batch_summary(session, batch_id)
                archived = _archived_jobs(session, batch_id)
            progress.update(done_task, completed=summary["done"])
            progress.update(archived_task, completed=archived)
            finished = summary["finished_at"] is not None
            if finished and archived >= summary["counts"]["COMPLETED"]:
                return summary
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the batch did not finish within {timeout:.0f} s: {summary['counts']}"
                )
            time.sleep(0.25)


def _archived_jobs(session: Any, batch_id: uuid.UUID) -> int:
    from sqlalchemy import func, select

    from models import Image, Job

    return int(
        session.scalar(
            select(func.count(func.distinct(Image.job_id)))
            .join(Job, Job.id == Image.job_id)
            .where(Job.batch_id == batch_id, Image.archived_at.is_not(None))
        )
        or 0
    )


def _print_summary(console: Console, batch_id: uuid.UUID) -> None:
    from models.db import session_scope
    from models.queries import list_jobs

    table = Table(title="demo batch", show_lines=False)
    table.add_column("custom_id", no_wrap=True, overflow="ellipsis", max_width=16)
    for column in ("ratio", "res", "seed", "status", "size", "sha256"):
        table.add_column(column, no_wrap=True)
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    with session_scope() as session:
        while True:
            page, cursor = list_jobs(session, batch_id=batch_id, limit=200, cursor=cursor)
            rows.extend(page)
            if cursor is None:
                break
    for job in sorted(rows, key=lambda j: j["custom_id"]):
        image = job["images"][0] if job["images"] else {}
        size = f"{image.get('archived_width')}x{image.get('archived_height')}" if image else "-"
        table.add_row(
            job["custom_id"],
            job["aspect_ratio"],
            job["resolution"],
            str(job["seed"]),
            job["status"],
            size,
            (image.get("sha256") or "-")[:12],
        )
    console.print(table)
