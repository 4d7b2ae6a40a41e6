"""Turning a file (or a list of dicts) of prompts into a batch of QUEUED jobs, in bounded memory.

Two passes over the input:

1. validate every row (prompt, enums, seed, custom_id uniqueness) and count jobs per resolution,
   holding only the explicit custom_ids seen so far; any error stops the enqueue unless
   `skip_invalid`, which leaves the bad rows out and reports them;
2. expand each valid row into its jobs (concrete seeds), drop `dedupe` hits, insert jobs in chunks
   (COPY on PostgreSQL, executemany elsewhere), commit, publish the chunk's ids over one producer,
   stamp `published_at`.

`enqueue_file(path, fmt, ...)` does this for a `.txt`/`.csv`/`.jsonl` file (or `-` for stdin,
spooled to a temporary file so it can be read twice); `enqueue_rows(rows, ...)` for an in-memory
list of dicts such as the JSON body of `POST /api/batches`. Both return an `EnqueueResult`.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from imagine.settings import Settings, get_settings
from models import AspectRatio, Batch, Job, JobStatus, Reasoning, Resolution, prompt_hash, utcnow
from models.db import session_scope
from worker.exceptions import EnqueueError

logger = logging.getLogger("worker.enqueue")

Format = Literal["txt", "csv", "jsonl"]
FIELDS = ("prompt", "aspect_ratio", "resolution", "reasoning", "seed", "custom_id")
MAX_PROMPT_CHARS = 10_000
MAX_CUSTOM_ID_CHARS = 200
MAX_SEED = 2**63 - 1
RANDOM_SEED_MAX = 2**31 - 1
CHUNK_SIZE = 5_000
# Errors kept in the result; the count of all of them is always exact.
MAX_REPORTED_ERRORS = 1_000
_GENERATED_ID = re.compile(r"^[1-9][0-9]*(-[1-9][0-9]*)?$")


@dataclass(frozen=True, slots=True)
class PromptRow:
    """One input row as read: raw values, its line number, and where each field sits on the line."""

    line: int
    values: Mapping[str, Any]
    columns: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RowError:
    """A validation error: the 1-based line and column it points at, and what is wrong."""

    line: int
    column: int
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"line {self.line}, column {self.column}{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Defaults:
    """Batch-wide parameters; a row's own values override them."""

    aspect_ratio: str = AspectRatio.R1_1.value
    resolution: str = Resolution.R2K.value
    reasoning: str = Reasoning.LOW.value
    seed: int | None = None
    seeds_per_prompt: int = 1


@dataclass(slots=True)
class EnqueueResult:
    """What an enqueue did (or, for a dry run, would do)."""

    batch_id: uuid.UUID | None
    jobs: int
    skipped: int
    estimated_cost_usd: float
    errors: list[RowError] = field(default_factory=list)
    invalid_rows: int = 0
    deduplicated: int = 0
    dry_run: bool = False

    def summary(self) -> dict[str, Any]:
        """The `--json` answer: exactly batch_id, jobs, skipped and estimated_cost_usd."""
        return {
            "batch_id": str(self.batch_id) if self.batch_id else None,
            "jobs": self.jobs,
            "skipped": self.skipped,
            "estimated_cost_usd": self.estimated_cost_usd,
        }


@dataclass(frozen=True, slots=True)
class _Valid:
    line: int
    prompt: str
    aspect_ratio: str
    resolution: str
    reasoning: str
    seed: int | None
    custom_id: str | None


RowSource = Callable[[], Iterable[PromptRow | Mapping[str, Any]]]
Progress = Callable[[int], None]


def detect_format(path: str | Path, fmt: str | None = None) -> Format:
    """The input format from `fmt` or the file extension (`-` without a format means txt)."""
    name = (fmt or Path(str(path)).suffix.lstrip(".") or "txt").lower()
    if name in ("txt", "text"):
        return "txt"
    if name == "csv":
        return "csv"
    if name in ("jsonl", "ndjson"):
        return "jsonl"
    raise EnqueueError(f"unknown input format {name!r}: use txt, csv or jsonl")


def read_prompts_file(path: str | Path, fmt: str | None = None) -> Iterator[PromptRow]:
    """Stream the rows of a prompts file, each with its line number; blank lines are skipped."""
    kind = detect_format(path, fmt)
    with open(path, encoding="utf-8", newline="") as handle:
        if kind == "txt":
            yield from _read_txt(handle)
        elif kind == "csv":
            yield from _read_csv(handle)
        else:
            yield from _read_jsonl(handle)


def _read_txt(handle: Iterable[str]) -> Iterator[PromptRow]:
    for number, raw in enumerate(handle, start=1):
        text = raw.rstrip("\r\n")
        if text.strip():
            yield PromptRow(number, {"prompt": text}, {"prompt": 1})


def _read_csv(handle: Iterable[str]) -> Iterator[PromptRow]:
    reader = csv.reader(handle)
    header: list[str] | None = None
    last_line = 0
    for record in reader:
        line = last_line + 1
        last_line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in record]
            yield from _csv_header_errors(header, line)
            continue
        if len(record) > len(header):
            yield PromptRow(line, {"__error__": "more cells than header columns"}, {})
            continue
        values = {header[i]: cell for i, cell in enumerate(record) if cell.strip()}
        columns = {header[i]: i + 1 for i in range(len(record))}
        yield PromptRow(line, values, columns)


def _csv_header_errors(header: list[str], line: int) -> Iterator[PromptRow]:
    # The header's own problems travel as an error row so that validation reports them in order.
    for i, name in enumerate(header, start=1):
        if name not in FIELDS:
            yield PromptRow(line, {"__error__": f"unknown column {name!r}"}, {"__error__": i})
    if "prompt" not in header:
        yield PromptRow(line, {"__error__": "the header has no 'prompt' column"}, {})


def _read_jsonl(handle: Iterable[str]) -> Iterator[PromptRow]:
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield PromptRow(
                number, {"__error__": f"invalid JSON: {exc.msg}"}, {"__error__": exc.colno}
            )
            continue
        if not isinstance(value, dict):
            yield PromptRow(number, {"__error__": "a line must be a JSON object"}, {})
            continue
        columns = {key: raw.find(json.dumps(key)) + 1 or 1 for key in value}
        yield PromptRow(number, value, columns)


def _as_row(item: object, number: int) -> PromptRow:
    if isinstance(item, PromptRow):
        return item
    if not isinstance(item, Mapping):
        return PromptRow(number, {"__error__": "an item must be an object"}, {})
    return PromptRow(number, item, {key: i for i, key in enumerate(item, start=1)})


def _choice(
    row: PromptRow, name: str, default: str, allowed: Iterable[str], errors: list[RowError]
) -> str:
    value = row.values.get(name)
    if value is None:
        return default
    text = value.strip() if isinstance(value, str) else value
    options = list(allowed)
    if not isinstance(text, str) or text not in options:
        errors.append(
            RowError(
                row.line,
                row.columns.get(name, 1),
                f"{value!r} is not one of {', '.join(options)}",
                name,
            )
        )
        return default
    return text


def _seed(row: PromptRow, default: int | None, errors: list[RowError]) -> int | None:
    value = row.values.get("seed")
    if value is None:
        return default
    parsed: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        parsed = value
    elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        parsed = int(value)
    if parsed is None or not -1 <= parsed <= MAX_SEED:
        errors.append(
            RowError(
                row.line,
                row.columns.get("seed", 1),
                f"{value!r} is not an integer seed between -1 and 2**63-1",
                "seed",
            )
        )
        return None
    # The model reads 0 and -1 as "random": we pick the random seed ourselves so it is recorded.
    return None if parsed in (0, -1) else parsed


def validate_row(row: PromptRow, defaults: Defaults) -> tuple[_Valid | None, list[RowError]]:
    """A row checked against the model's input rules: the valid job template, or its errors."""
    errors: list[RowError] = []
    if "__error__" in row.values:
        column = row.columns.get("__error__", 1)
        return None, [RowError(row.line, column, str(row.values["__error__"]))]
    for i, key in enumerate(row.values, start=1):
        if key not in FIELDS:
            errors.append(RowError(row.line, row.columns.get(key, i), f"unknown field {key!r}"))
    prompt = row.values.get("prompt")
    column = row.columns.get("prompt", 1)
    if not isinstance(prompt, str) or not prompt.strip():
        errors.append(RowError(row.line, column, "the prompt is missing or empty", "prompt"))
        prompt = ""
    elif len(prompt) > MAX_PROMPT_CHARS:
        errors.append(
            RowError(row.line, column, f"longer than {MAX_PROMPT_CHARS} characters", "prompt")
        )
    elif "\x00" in prompt:
        errors.append(
            RowError(row.line, column + prompt.index("\x00"), "contains a NUL character", "prompt")
        )
    aspect_ratio = _choice(row, "aspect_ratio", defaults.aspect_ratio, AspectRatio, errors)
    resolution = _choice(row, "resolution", defaults.resolution, Resolution, errors)
    reasoning = _choice(row, "reasoning", defaults.reasoning, Reasoning, errors)
    seed = _seed(row, defaults.seed, errors)
    custom_id = row.values.get("custom_id")
    if custom_id is not None:
        if isinstance(custom_id, int) and not isinstance(custom_id, bool):
            custom_id = str(custom_id)
        limit = MAX_CUSTOM_ID_CHARS - 8  # room for the "-k" suffix of seeds_per_prompt
        if not isinstance(custom_id, str) or not custom_id.strip() or len(custom_id) > limit:
            errors.append(
                RowError(
                    row.line,
                    row.columns.get("custom_id", 1),
                    f"custom_id must be a non-empty string of at most {limit} characters",
                    "custom_id",
                )
            )
            custom_id = None
        else:
            custom_id = custom_id.strip()
    if errors:
        return None, errors
    return _Valid(
        row.line, prompt.strip(), aspect_ratio, resolution, reasoning, seed, custom_id
    ), []


@dataclass(slots=True)
class _Scan:
    valid_rows: int = 0
    invalid_rows: int = 0
    per_resolution: dict[str, int] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0
    bad_lines: set[int] = field(default_factory=set)

    def add_errors(self, errors: list[RowError]) -> None:
        self.error_count += len(errors)
        room = MAX_REPORTED_ERRORS - len(self.errors)
        self.errors.extend(errors[:room])


def _scan(source: RowSource, defaults: Defaults) -> _Scan:
    scan = _Scan()
    explicit_ids: dict[str, int] = {}
    # Lines whose custom_id will be generated from the line number: explicit ids may not take them.
    generated_lines = bytearray()
    for number, item in enumerate(source(), start=1):
        row = _as_row(item, number)
        valid, errors = validate_row(row, defaults)
        if valid is not None and valid.custom_id is not None:
            first = explicit_ids.setdefault(valid.custom_id, row.line)
            if first != row.line:
                errors = [
                    RowError(
                        row.line,
                        row.columns.get("custom_id", 1),
                        f"duplicate custom_id {valid.custom_id!r} (first on line {first})",
                        "custom_id",
                    )
                ]
                valid = None
        if valid is None:
            scan.invalid_rows += 1
            scan.bad_lines.add(row.line)
            scan.add_errors(errors)
            continue
        scan.valid_rows += 1
        scan.per_resolution[valid.resolution] = (
            scan.per_resolution.get(valid.resolution, 0) + defaults.seeds_per_prompt
        )
        if valid.custom_id is None:
            if len(generated_lines) <= row.line:
                generated_lines.extend(bytes(row.line + 1 - len(generated_lines)))
            generated_lines[row.line] = 1
    for custom_id, line in explicit_ids.items():
        if not _GENERATED_ID.match(custom_id):
            continue
        taken = int(custom_id.split("-")[0])
        if taken < len(generated_lines) and generated_lines[taken] and line not in scan.bad_lines:
            scan.invalid_rows += 1
            scan.valid_rows -= 1
            scan.bad_lines.add(line)
            scan.add_errors(
                [
                    RowError(
                        line,
                        1,
                        f"custom_id {custom_id!r} collides with the generated id of line {taken}",
                        "custom_id",
                    )
                ]
            )
    return scan


def price_of(resolution: str, settings: Settings) -> Decimal:
    """The configured price of one image at `resolution`."""
    price = settings.price_1k_usd if resolution == Resolution.R1K else settings.price_2k_usd
    return Decimal(str(price))


def _expand(
    valid: _Valid, defaults: Defaults, model: str, rng: random.Random
) -> Iterator[dict[str, Any]]:
    count = defaults.seeds_per_prompt
    if valid.seed is not None:
        seeds = [valid.seed + k for k in range(count)]
    else:
        seeds = rng.sample(range(1, RANDOM_SEED_MAX + 1), count)
    base_id = valid.custom_id or str(valid.line)
    for k, seed in enumerate(seeds, start=1):
        yield {
            "seq": valid.line,
            "custom_id": base_id if count == 1 else f"{base_id}-{k}",
            "prompt": valid.prompt,
            "aspect_ratio": valid.aspect_ratio,
            "resolution": valid.resolution,
            "reasoning": valid.reasoning,
            "seed": seed,
            "prompt_hash": prompt_hash(
                model, valid.prompt, valid.aspect_ratio, valid.resolution, valid.reasoning, seed
            ),
        }


def _completed_hashes(session: Session, hashes: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(hashes), 1000):
        part = hashes[start : start + 1000]
        found.update(
            session.scalars(
                select(Job.prompt_hash).where(
                    Job.prompt_hash.in_(part), Job.status == JobStatus.COMPLETED
                )
            )
        )
    return found


_COPY_COLUMNS = (
    "id",
    "batch_id",
    "seq",
    "custom_id",
    "prompt",
    "prompt_hash",
    "aspect_ratio",
    "resolution",
    "reasoning",
    "seed",
    "status",
    "attempts",
    "created_at",
    "status_changed_at",
    "published_at",
)


def _insert_jobs(session: Session, rows: list[dict[str, Any]]) -> None:
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # COPY is several times faster than a multi-row INSERT for large batches.
        driver = connection.connection.driver_connection
        with driver.cursor() as cursor:  # type: ignore[union-attr]
            sql = f"COPY jobs ({', '.join(_COPY_COLUMNS)}) FROM STDIN"
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row([row[name] for name in _COPY_COLUMNS])
        return
    session.execute(insert(Job), rows)


def _chunks(
    valid_rows: Iterator[_Valid], defaults: Defaults, model: str, rng: random.Random
) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for valid in valid_rows:
        chunk.extend(_expand(valid, defaults, model, rng))
        if len(chunk) >= CHUNK_SIZE:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _valid_rows(source: RowSource, defaults: Defaults, bad_lines: set[int]) -> Iterator[_Valid]:
    for number, item in enumerate(source(), start=1):
        row = _as_row(item, number)
        if row.line in bad_lines:
            continue
        valid, _ = validate_row(row, defaults)
        if valid is not None:
            yield valid


def _source_of(rows: Iterable[PromptRow | Mapping[str, Any]] | RowSource) -> RowSource:
    if callable(rows):
        return rows
    if iter(rows) is rows:
        # A one-shot iterator cannot be read twice: keep it (callers with huge inputs pass a file).
        kept = list(rows)
        return lambda: kept
    return lambda: rows


def enqueue_rows(
    rows: Iterable[PromptRow | Mapping[str, Any]] | RowSource,
    *,
    name: str,
    defaults: Defaults | None = None,
    dedupe: bool = False,
    skip_invalid: bool = False,
    dry_run: bool = False,
    max_cost: float | None = None,
    notify_url: str | None = None,
    source_label: str | None = None,
    database_url: str | None = None,
    publish: bool = True,
    settings: Settings | None = None,
    progress: Progress | None = None,
    rng: random.Random | None = None,
) -> EnqueueResult:
    """Validate `rows` (dicts with prompt and optional overrides, or PromptRows), create the batch.

    Raises `InvalidInputError` (with `.errors`, each naming line and column) when a row is invalid
    and `skip_invalid` is false, `OverBudgetError` when the estimate exceeds `max_cost`, and
    `EnqueueError` when no valid row remains. `rows` may be a list, or a zero-argument callable
    returning a fresh iterable (read twice: once to validate, once to insert).
    """
    from worker.exceptions import InvalidInputError, OverBudgetError

    settings = settings or get_settings()
    defaults = defaults or Defaults()
    if defaults.seeds_per_prompt < 1:
        raise EnqueueError("seeds_per_prompt must be at least 1")
    source = _source_of(rows)
    scan = _scan(source, defaults)
    if scan.error_count and not skip_invalid:
        raise InvalidInputError(scan.errors, scan.error_count)
    if not scan.valid_rows:
        raise EnqueueError("no valid prompt to enqueue")
    estimate = sum(
        (price_of(res, settings) * count for res, count in scan.per_resolution.items()),
        Decimal(0),
    )
    if max_cost is not None and estimate > Decimal(str(max_cost)):
        raise OverBudgetError(float(estimate), max_cost)
    result = EnqueueResult(
        batch_id=None,
        jobs=0,
        skipped=scan.invalid_rows,
        estimated_cost_usd=0.0,
        errors=scan.errors,
        invalid_rows=scan.invalid_rows,
        dry_run=dry_run,
    )
    rng = rng or random.SystemRandom()
    model = settings.fal_model
    valid = _valid_rows(source, defaults, scan.bad_lines)
    cost = Decimal(0)
    if publish and not dry_run:
        from worker.slots import mark_broker_epoch

        mark_broker_epoch()
    batch_id = (
        None
        if dry_run
        else _create_batch(name, model, defaults, notify_url, source_label, database_url)
    )
    for chunk in _chunks(valid, defaults, model, rng):
        if dedupe:
            with session_scope(database_url) as session:
                done = _completed_hashes(session, [r["prompt_hash"] for r in chunk])
            if done:
                kept = [r for r in chunk if r["prompt_hash"] not in done]
                result.deduplicated += len(chunk) - len(kept)
                chunk = kept
        cost += sum((price_of(r["resolution"], settings) for r in chunk), Decimal(0))
        result.jobs += len(chunk)
        if batch_id is not None and chunk:
            _store_chunk(batch_id, chunk, database_url, publish)
        if progress is not None:
            progress(len(chunk))
    result.skipped += result.deduplicated
    result.estimated_cost_usd = float(cost)
    if batch_id is not None:
        with session_scope(database_url) as session:
            session.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(total_jobs=result.jobs, price_estimate_usd=cost)
            )
            if result.jobs == 0:
                # Everything was a dedupe hit: the batch is born finished.
                session.execute(
                    update(Batch).where(Batch.id == batch_id).values(finished_at=utcnow())
                )
        result.batch_id = batch_id
    logger.info(
        "enqueue %s: %d jobs, %d skipped, estimate $%.2f%s",
        name,
        result.jobs,
        result.skipped,
        result.estimated_cost_usd,
        " (dry run)" if dry_run else "",
    )
    return result


def _create_batch(
    name: str,
    model: str,
    defaults: Defaults,
    notify_url: str | None,
    source_label: str | None,
    database_url: str | None,
) -> uuid.UUID:
    batch_id = uuid.uuid4()
    params = {
        "aspect_ratio": defaults.aspect_ratio,
        "resolution": defaults.resolution,
        "reasoning": defaults.reasoning,
        "seed": defaults.seed,
        "seeds_per_prompt": defaults.seeds_per_prompt,
    }
    with session_scope(database_url) as session:
        session.execute(
            insert(Batch).values(
                id=batch_id,
                name=name[:200],
                model=model,
                params=params,
                source=(source_label or "")[:500] or None,
                notify_url=notify_url,
                created_at=utcnow(),
            )
        )
    return batch_id


def _store_chunk(
    batch_id: uuid.UUID, chunk: list[dict[str, Any]], database_url: str | None, publish: bool
) -> None:
    now = utcnow()
    for row in chunk:
        row.update(
            id=uuid.uuid4(),
            batch_id=batch_id,
            status=JobStatus.QUEUED.value,
            attempts=0,
            created_at=now,
            status_changed_at=now,
            # Stamped with the insert: publishing follows the commit (see worker.publish).
            published_at=now if publish else None,
        )
    with session_scope(database_url) as session:
        _insert_jobs(session, chunk)
    if publish:
        from worker.publish import publish_submits

        publish_submits([row["id"] for row in chunk], database_url=database_url, stamp=False)


def enqueue_file(
    path: str | Path,
    fmt: str | None = None,
    *,
    name: str | None = None,
    **kwargs: Any,
) -> EnqueueResult:
    """`enqueue_rows` over a prompts file; `-` reads stdin (spooled to a temporary file)."""
    kind = detect_format(path, fmt)
    if str(path) == "-":
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=f".{kind}") as spool:
            shutil.copyfileobj(sys.stdin, spool)
            spool.flush()
            return enqueue_file(spool.name, kind, name=name or "stdin", **kwargs)
    if not Path(path).is_file():
        raise EnqueueError(f"no such file: {path}")
    return enqueue_rows(
        lambda: read_prompts_file(path, kind),
        name=name or Path(path).name,
        source_label=str(path),
        **kwargs,
    )
