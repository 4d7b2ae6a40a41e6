"""The pipeline's commands: enqueue, worker, beat, cancel/retry/pause/resume, status, history."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from imagine.commands_history import (
    is_terminal,
    parse_uuid,
    parse_when,
    print_job_detail,
    print_jobs_table,
)
from imagine.settings import get_settings

ASPECT_RATIOS = [
    "1:1", "16:9", "9:16", "4:3", "3:4", "3:1", "1:3", "3:2", "2:3", "21:9", "4:5", "5:4", "4:1",
    "1:4",
]  # fmt: skip
STATUSES = ["QUEUED", "SUBMITTING", "SUBMITTED", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]
DEFAULT_QUEUES = "submit,archive,maintenance,notify"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=None, default=str))


@click.command("enqueue")
@click.argument("file", type=click.Path(allow_dash=True))
@click.option("--name", help="Batch name (default: the file name).")
@click.option("--format", "fmt", type=click.Choice(["txt", "csv", "jsonl"]), help="Input format.")
@click.option("--aspect-ratio", type=click.Choice(ASPECT_RATIOS), default="1:1", show_default=True)
@click.option("--resolution", type=click.Choice(["1K", "2K"]), default="2K", show_default=True)
@click.option("--reasoning", type=click.Choice(["low", "high"]), default="low", show_default=True)
@click.option("--seed", type=click.IntRange(1, 2**63 - 1), help="Base seed (random if unset).")
@click.option("--seeds-per-prompt", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--dedupe", is_flag=True, help="Skip jobs identical to an already COMPLETED one.")
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid rows, report the others.")
@click.option("--dry-run", is_flag=True, help="Validate, count and price; write nothing.")
@click.option("--max-cost", type=float, help="Refuse the batch if its estimate exceeds this (USD).")
@click.option("--notify-url", help="URL notified when the batch finishes.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def enqueue(
    file: str,
    name: str | None,
    fmt: str | None,
    aspect_ratio: str,
    resolution: str,
    reasoning: str,
    seed: int | None,
    seeds_per_prompt: int,
    dedupe: bool,
    skip_invalid: bool,
    dry_run: bool,
    max_cost: float | None,
    notify_url: str | None,
    as_json: bool,
) -> None:
    """Validate FILE (.txt, .csv, .jsonl or - for stdin) and enqueue it as a batch."""
    from worker.enqueue import Defaults, enqueue_file
    from worker.exceptions import EnqueueError, InvalidInputError

    defaults = Defaults(aspect_ratio, resolution, reasoning, seed, seeds_per_prompt)
    kwargs: dict[str, Any] = {
        "defaults": defaults,
        "dedupe": dedupe,
        "skip_invalid": skip_invalid,
        "dry_run": dry_run,
        "max_cost": max_cost,
        "notify_url": notify_url,
    }
    show_bar = sys.stderr.isatty() and not as_json
    try:
        if show_bar:
            result = _enqueue_with_bar(file, fmt, name, kwargs)
        else:
            result = enqueue_file(file, fmt, name=name, **kwargs)
    except InvalidInputError as exc:
        raise click.ClickException(str(exc)) from None
    except EnqueueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(result.summary())
        return
    for error in result.errors:
        click.echo(f"skipped: {error}", err=True)
    verb = "would enqueue" if dry_run else "enqueued"
    where = f" as batch {result.batch_id}" if result.batch_id else ""
    click.echo(
        f"{verb} {result.jobs} jobs{where}; skipped {result.skipped}; "
        f"estimated cost ${result.estimated_cost_usd:.2f}"
    )


def _enqueue_with_bar(file: str, fmt: str | None, name: str | None, kwargs: dict[str, Any]) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from worker.enqueue import enqueue_file

    with Progress(
        TextColumn("enqueue"), BarColumn(), MofNCompleteColumn(), transient=True
    ) as progress:
        task = progress.add_task("jobs", total=None)
        return enqueue_file(
            file,
            fmt,
            name=name,
            progress=lambda n: progress.advance(task, n),
            **kwargs,
        )


@click.command("worker")
@click.option("--queues", "-Q", default=DEFAULT_QUEUES, show_default=True)
@click.option("--concurrency", "-c", type=int, default=8, show_default=True)
@click.option(
    "--pool",
    type=click.Choice(["threads", "prefork", "solo", "gevent", "eventlet"]),
    default="threads",
    show_default=True,
    help="threads suits I/O-bound submits that block waiting for a slot.",
)
@click.option("--hostname", "-n", help="Celery node name (default: imagine@%h-<pid>).")
@click.option("--beat", is_flag=True, help="Also run the reconciler schedule (one node only).")
def worker(queues: str, concurrency: int, pool: str, hostname: str | None, beat: bool) -> None:
    """Start a Celery worker for the submit, archive, maintenance and notify queues."""
    from worker.celery_app import celery_app

    # One INFO line per HTTP call drowns the worker's own log (fal_queue logs calls at DEBUG).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    argv = [
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        get_settings().log_level,
        "--hostname",
        hostname or f"imagine@%h-{_pid()}",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        argv += ["--beat", "--schedule", str(_beat_schedule_file())]
    celery_app.worker_main(argv)


def _pid() -> int:
    import os

    return os.getpid()


def _beat_schedule_file() -> Path:
    path = Path("var") / "celerybeat-schedule"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@click.command("beat")
def beat() -> None:
    """Run Celery beat: the reconciler every RECONCILE_INTERVAL seconds (run exactly one)."""
    from worker.celery_app import celery_app

    celery_app.start(
        [
            "beat",
            "--loglevel",
            get_settings().log_level,
            "--schedule",
            str(_beat_schedule_file()),
        ]
    )


@click.command("cancel")
@click.argument("ident")
def cancel(ident: str) -> None:
    """Cancel a batch or one job: queued ones locally, in-flight ones at fal too."""
    from worker.control import cancel as do_cancel
    from worker.control import resolve
    from worker.exceptions import PipelineError
    from worker.fal import get_fal_client

    try:
        target = resolve(ident)
        report = do_cancel(target, get_fal_client())
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"cancelled {report.cancelled_local} queued and {report.cancelled_at_fal} in-flight jobs "
        f"of {target.kind} {target.id}"
        + (f" (fal: {report.fal_answers})" if report.fal_answers else "")
    )


@click.command("retry")
@click.argument("batch_id")
@click.option("--failed", is_flag=True, required=True, help="Re-queue the FAILED jobs.")
def retry(batch_id: str, failed: bool) -> None:
    """Re-queue a batch's FAILED jobs (the one user-initiated step back)."""
    from worker.control import retry_failed
    from worker.exceptions import PipelineError

    try:
        count = retry_failed(parse_uuid(batch_id, "batch"))
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"re-queued {count} failed jobs")


@click.command("pause")
@click.argument("batch_id")
def pause(batch_id: str) -> None:
    """Stop submitting a batch's jobs; in-flight ones finish."""
    from worker.control import pause as do_pause
    from worker.exceptions import PipelineError

    try:
        do_pause(parse_uuid(batch_id, "batch"))
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"paused batch {batch_id}")


@click.command("resume")
@click.argument("batch_id")
def resume(batch_id: str) -> None:
    """Unpause a batch (also after fal refused the account) and publish its queued jobs."""
    from worker.control import resume as do_resume
    from worker.exceptions import PipelineError

    try:
        count = do_resume(parse_uuid(batch_id, "batch"))
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"resumed batch {batch_id}: published {count} queued jobs")


def _summary(batch_id: uuid.UUID) -> dict[str, Any]:
    from models.db import session_scope
    from models.exceptions import NotFoundError
    from models.queries import batch_summary

    try:
        with session_scope() as session:
            return batch_summary(session, batch_id)
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None


def _status_line(data: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items() if v)
    eta = f", ETA {data['eta_seconds']:.0f}s" if data.get("eta_seconds") else ""
    flags = " [paused: " + str(data["pause_reason"]) + "]" if data["paused"] else ""
    flags += " [cancelled]" if data["cancelled"] else ""
    return (
        f"{data['name']} ({data['id']}): {data['done']}/{data['total']} done; {counts}; "
        f"{data['rate_per_second']:.2f}/s{eta}{flags}"
    )


@click.command("status")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
def status(batch_id: str, as_json: bool) -> None:
    """Counts per state, rate and ETA of a batch."""
    data = _summary(parse_uuid(batch_id, "batch"))
    if as_json:
        _echo_json(data)
    else:
        click.echo(_status_line(data))


@click.command("watch")
@click.argument("batch_id")
@click.option("--interval", type=float, default=1.0, show_default=True)
def watch(batch_id: str, interval: float) -> None:
    """A live progress bar until the batch ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    parsed = parse_uuid(batch_id, "batch")
    data = _summary(parsed)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    ) as progress:
        task = progress.add_task(data["name"], total=data["total"], info="")
        while True:
            data = _summary(parsed)
            counts = data["counts"]
            info = (
                f"ok {counts['COMPLETED']} failed {counts['FAILED']} "
                f"in flight {counts['SUBMITTING'] + counts['SUBMITTED'] + counts['IN_PROGRESS']} "
                f"{data['rate_per_second']:.2f}/s"
            )
            progress.update(task, total=data["total"], completed=data["done"], info=info)
            if data["finished_at"] or data["cancelled"] or data["done"] >= data["total"]:
                break
            time.sleep(interval)
    click.echo(_status_line(data))


@click.command("jobs")
@click.option("--batch", "batch_id", help="Only this batch's jobs.")
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only jobs in this state.")
@click.option("--search", help="Only jobs whose prompt contains this text (any case).")
@click.option("--seed", type=int, help="Only jobs that sent or got back this seed.")
@click.option(
    "--since", callback=parse_when, help="Created at or after: ISO date/time (UTC) or an age (2h)."
)
@click.option(
    "--until", callback=parse_when, help="Created before: ISO date/time (UTC) or an age (30m)."
)
@click.option("--limit", type=int, default=100, show_default=True, help="Jobs per page.")
@click.option("--all", "all_pages", is_flag=True, help="Every matching job, not one page.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def jobs(
    batch_id: str | None,
    status_: str | None,
    search: str | None,
    seed: int | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    all_pages: bool,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    from models import JobStatus
    from models.db import session_scope
    from models.queries import list_jobs

    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        with session_scope() as session:
            page, cursor = list_jobs(
                session,
                batch_id=parse_uuid(batch_id, "batch") if batch_id else None,
                status=JobStatus(status_) if status_ else None,
                search=search or None,
                seed=seed,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        found.extend(page)
        if not all_pages or cursor is None:
            break
    if as_json:
        _echo_json(found)
        return
    if is_terminal():
        print_jobs_table(found)
        return
    for job in found:
        click.echo(f"{job['id']}  {job['status']:<11} {job['custom_id']:<12} {job['prompt'][:60]}")


@click.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def show(job_id: str, as_json: bool) -> None:
    """Everything known of one job."""
    from models.db import session_scope
    from models.exceptions import NotFoundError
    from models.queries import get_job_detail

    try:
        with session_scope() as session:
            data = get_job_detail(session, parse_uuid(job_id, "job"))
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(data)
        return
    print_job_detail(data)


COMMANDS = [enqueue, worker, beat, cancel, retry, pause, resume, status, watch, jobs, show]
