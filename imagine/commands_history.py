"""History commands (`batches`, `export`) and the tables `jobs` and `show` print on a terminal."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from imagine.settings import get_settings

EXPORT_PAGE = 500
COPY_CHUNK = 1 << 20
# Terminals at least this wide get every column of the jobs table.
WIDE_TERMINAL = 110
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
STATUS_STYLES = {
    "COMPLETED": "green",
    "FAILED": "red",
    "CANCELLED": "dim",
    "IN_PROGRESS": "cyan",
    "SUBMITTED": "cyan",
    "SUBMITTING": "cyan",
    "QUEUED": "yellow",
}
JOB_COLUMNS = [
    "id",
    "batch_id",
    "custom_id",
    "prompt",
    "aspect_ratio",
    "resolution",
    "reasoning",
    "seed",
    "returned_seed",
    "status",
    "fal_request_id",
    "attempts",
    "error_type",
    "error_message",
    "created_at",
    "submitted_at",
    "started_at",
    "completed_at",
]
IMAGE_COLUMNS = {
    "image_index": "index",
    "image_url": "url",
    "image_width": "width",
    "image_height": "height",
    "image_content_type": "content_type",
    "image_file_size": "file_size",
    "image_sha256": "sha256",
    "image_local_path": "local_path",
}


def parse_when(_ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An option's moment: an ISO date or datetime (UTC unless it says otherwise) or an age (2h)."""
    if value is None:
        return None
    text = value.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return datetime.now(UTC) - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO date/time nor an age like 30m, 2h or 7d", param=param
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_terminal() -> bool:
    """True when stdout is a terminal, where tables beat plain lines."""
    return sys.stdout.isatty()


def _console() -> Console:
    return Console(highlight=False)


def _text(value: Any, style: str = "") -> Text:
    # Text, never a str: rich would read markup like "[red]" inside a user's prompt.
    return Text("—" if value is None else str(value), style=style)


def _status(value: str) -> Text:
    return _text(value, STATUS_STYLES.get(value, ""))


def _when(value: str | None) -> Text:
    return _text(value[:19].replace("T", " ") if value else None)


def print_jobs_table(jobs: list[dict[str, Any]]) -> None:
    """Jobs as a rich table; narrow terminals leave out the seed and creation time."""
    console = _console()
    wide = console.width >= WIDE_TERMINAL
    table = Table(title=f"{len(jobs)} jobs", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("status", no_wrap=True)
    table.add_column("custom id", max_width=16, overflow="ellipsis", no_wrap=True)
    if wide:
        table.add_column("seed", justify="right", no_wrap=True)
        table.add_column("created (UTC)", no_wrap=True)
    table.add_column("prompt", min_width=16, ratio=1, overflow="fold")
    for job in jobs:
        middle = [_text(job["seed"]), _when(job["created_at"])] if wide else []
        table.add_row(
            _text(job["id"]),
            _status(job["status"]),
            _text(job["custom_id"]),
            *middle,
            _text(job["prompt"]),
        )
    console.print(table)


def print_job_detail(data: dict[str, Any]) -> None:
    """Everything known of one job: fields, images, attempts and webhook events."""
    console = _console()
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column(overflow="fold")
    for key, value in data.items():
        if key in ("images", "attempt_log", "webhook_events"):
            continue
        facts.add_row(key, _status(value) if key == "status" else _text(value))
    console.print(facts)
    # Lines, not a table: a sha256 or a path must never be folded, so it can be copied and grepped.
    for image in data["images"]:
        width = image["archived_width"] or image["width"]
        height = image["archived_height"] or image["height"]
        console.print(
            _text(f"image {image['index']}: {width}x{height}, {image['file_size']} bytes"),
            _text(f"  sha256 {image['sha256'] or '—'}"),
            _text(
                f"  file   {image['local_path'] or image['archive_error'] or 'not archived yet'}"
            ),
            _text(f"  url    {image['url']}"),
            sep="\n",
            soft_wrap=True,
        )
    attempts = Table(title="attempts", title_justify="left")
    for column in ("#", "outcome", "fal request", "http", "error", "started", "finished"):
        attempts.add_column(column, overflow="fold")
    for attempt in data["attempt_log"]:
        error = ": ".join(filter(None, [attempt["error_type"], attempt["error_message"]]))
        attempts.add_row(
            _text(attempt["number"]),
            _text(attempt["outcome"]),
            _text(attempt["fal_request_id"]),
            _text(attempt["http_status"]),
            _text(error or None),
            _when(attempt["started_at"]),
            _when(attempt["finished_at"]),
        )
    console.print(attempts)
    events = Table(title="webhook events", title_justify="left")
    for column in ("received", "status", "signature", "outcome", "fal request", "detail"):
        events.add_column(column, overflow="fold")
    for event in data["webhook_events"]:
        events.add_row(
            _when(event["received_at"]),
            _text(event["status"]),
            _text(event["signature"]),
            _text(event["outcome"]),
            _text(event["request_id"]),
            _text(event["detail"]),
        )
    console.print(events)


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """A UUID from the command line, or a usage error naming what it should have been."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a {what} id") from None


@click.command("batches")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def batches(limit: int, as_json: bool) -> None:
    """List batches, newest first, with their counts per state."""
    from models.db import get_session_factory
    from models.queries import list_batches

    with get_session_factory()() as session:
        page, _ = list_batches(session, limit=limit)
    if as_json:
        click.echo(json.dumps(page))
        return
    if not is_terminal():
        for b in page:
            click.echo(f"{b['id']}  {b['done']}/{b['total']}  {_counts_line(b)}  {b['name']}")
        return
    table = Table(title=f"{len(page)} batches", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("name", min_width=12, ratio=1, overflow="fold")
    table.add_column("done", justify="right", overflow="fold")
    table.add_column("states", min_width=12, ratio=1)
    table.add_column("created (UTC)", max_width=19, overflow="fold")
    for b in page:
        table.add_row(
            _text(b["id"]),
            _text(b["name"]),
            _text(f"{b['done']}/{b['total']} {b['progress']:.0%}"),
            _text(_counts_line(b)),
            _when(b["created_at"]),
        )
    _console().print(table)


def _counts_line(batch: dict[str, Any]) -> str:
    return " ".join(f"{state.lower()}={n}" for state, n in batch["counts"].items() if n) or "empty"


def iter_batch_jobs(batch_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    """Every job of a batch, one keyset page at a time, each page in its own short transaction."""
    from models.db import get_session_factory
    from models.queries import list_jobs

    sessions = get_session_factory()
    cursor: str | None = None
    while True:
        with sessions() as session:
            page, cursor = list_jobs(session, batch_id=batch_id, limit=EXPORT_PAGE, cursor=cursor)
        yield from page
        if cursor is None:
            return


def _csv_rows(job: dict[str, Any]) -> Iterator[list[Any]]:
    """One row per image (one row with empty image columns when the job has none)."""
    base = [job[name] for name in JOB_COLUMNS]
    for image in job["images"] or [None]:
        yield base + [image[key] if image else None for key in IMAGE_COLUMNS.values()]


def _zip_name(job: dict[str, Any], image: dict[str, Any], suffix: str) -> str:
    """`images/<custom_id>-<n><suffix>`, unique within the batch.

    custom_id is unique per batch; one that needs escaping gets `~<job id>` appended, and `~`
    never survives escaping, so no escaped name can meet an unescaped one.
    """
    custom_id = job["custom_id"]
    safe = _UNSAFE_NAME.sub("_", custom_id)[:100]
    if safe != custom_id or not safe or safe.startswith("."):
        safe = f"{safe}~{job['id']}"
    return f"images/{safe}-{image['index']}{suffix}"


def _archived(stored: str | None, root: Path) -> Path | None:
    """The archived file, or None when it is missing or lies outside ARCHIVE_DIR."""
    if not stored:
        return None
    path = (root / stored).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


class _ZipExport:
    """Streams archived images into a zip and keeps the manifest in a temporary file."""

    def __init__(self, zf: zipfile.ZipFile, root: Path) -> None:
        self.zf = zf
        self.root = root
        self.manifest = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self.images = 0
        self.missing = 0
        self.mismatched = 0

    def add_job(self, job: dict[str, Any]) -> None:
        """Copy the job's archived images into the zip and write its manifest line."""
        for image in job["images"]:
            path = _archived(image["local_path"], self.root)
            image["zip_path"] = None
            if path is None:
                self.missing += 1
                continue
            name = _zip_name(job, image, path.suffix or ".png")
            digest = hashlib.sha256()
            info = zipfile.ZipInfo(name, date_time=_zip_time(image["archived_at"]))
            # Images are compressed already; storing them keeps the export fast.
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = path.stat().st_size
            with path.open("rb") as source, self.zf.open(info, "w") as target:
                while chunk := source.read(COPY_CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
            image["zip_path"] = name
            recorded = image["sha256"]
            image["sha256"] = digest.hexdigest()
            if recorded and recorded != image["sha256"]:
                image["sha256_recorded"] = recorded
                self.mismatched += 1
            self.images += 1
        self.manifest.write(json.dumps(job, ensure_ascii=False) + "\n")

    def finish(self) -> None:
        """Add the manifest as the zip's last entry."""
        self.manifest.seek(0)
        info = zipfile.ZipInfo("manifest.jsonl", date_time=datetime.now(UTC).timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        with self.zf.open(info, "w", force_zip64=True) as target:
            while chunk := self.manifest.read(COPY_CHUNK):
                target.write(chunk.encode("utf-8"))
        self.manifest.close()


def _zip_time(stamp: str | None) -> tuple[int, int, int, int, int, int]:
    moment = datetime.fromisoformat(stamp) if stamp else datetime.now(UTC)
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


@click.command("export")
@click.argument("batch_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl", "zip"]),
    default="jsonl",
    show_default=True,
    help="csv: a row per image; jsonl: a job per line; zip: archived images and a manifest.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write; `-` is stdout (default: stdout, or <batch id>.zip for zip).",
)
def export(batch_id: str, fmt: str, output: str | None) -> None:
    """Export every job of a batch, streaming page by page (millions of jobs are fine)."""
    from models.db import get_session_factory
    from models.exceptions import NotFoundError
    from models.queries import batch_summary

    parsed = parse_uuid(batch_id, "batch")
    try:
        with get_session_factory()() as session:
            total = batch_summary(session, parsed)["total"]
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    jobs = iter_batch_jobs(parsed)
    if fmt == "zip":
        target = output or f"{parsed}.zip"
        _export_zip(jobs, target)
        return
    count = 0
    with _text_output(output) as stream:
        if fmt == "jsonl":
            for job in jobs:
                stream.write(json.dumps(job, ensure_ascii=False) + "\n")
                count += 1
        else:
            writer = csv.writer(stream)
            writer.writerow(JOB_COLUMNS + list(IMAGE_COLUMNS))
            for job in jobs:
                writer.writerows(_csv_rows(job))
                count += 1
    click.echo(f"exported {count} of {total} jobs", err=True)


@contextmanager
def _text_output(output: str | None) -> Iterator[IO[str]]:
    if output is None or output == "-":
        yield sys.stdout
        return
    # newline="" lets the csv module write its own line endings.
    with open(output, "w", encoding="utf-8", newline="") as stream:
        yield stream


def _export_zip(jobs: Iterator[dict[str, Any]], target: str) -> None:
    root = get_settings().archive_dir.resolve()
    with click.open_file(target, "wb") as stream, zipfile.ZipFile(stream, "w") as zf:
        exporter = _ZipExport(zf, root)
        count = 0
        for job in jobs:
            exporter.add_job(job)
            count += 1
        exporter.finish()
    where = "stdout" if target == "-" else target
    click.echo(f"exported {count} jobs and {exporter.images} images to {where}", err=True)
    if exporter.missing:
        click.echo(f"warning: {exporter.missing} images are not in the archive", err=True)
    if exporter.mismatched:
        click.echo(
            f"warning: {exporter.mismatched} archived files no longer match their recorded "
            "sha256 (the manifest has both)",
            err=True,
        )


COMMANDS = [batches, export]
