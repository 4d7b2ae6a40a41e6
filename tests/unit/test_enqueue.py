"""Enqueue: parsing, validation (line and column), seeds, dedupe, dry run, budget, insert."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from imagine.settings import Settings
from models import Batch, Job, JobStatus
from worker.enqueue import (
    Defaults,
    PromptRow,
    detect_format,
    enqueue_file,
    enqueue_rows,
    read_prompts_file,
    validate_row,
)
from worker.exceptions import EnqueueError, InvalidInputError, OverBudgetError

SETTINGS = Settings(price_1k_usd=0.03, price_2k_usd=0.05, _env_file=None)  # type: ignore[call-arg]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def enqueue(rows: object, **kw: object) -> object:
    kw.setdefault("name", "t")
    kw.setdefault("settings", SETTINGS)
    kw.setdefault("publish", False)
    return enqueue_rows(rows, **kw)  # type: ignore[arg-type]


def jobs_of(url: str) -> list[Job]:
    engine = create_engine(url)
    with Session(engine) as session:
        jobs = list(session.scalars(select(Job).order_by(Job.seq, Job.custom_id)))
    engine.dispose()
    return jobs


def test_formats_by_extension_or_flag() -> None:
    assert detect_format("a.txt") == "txt"
    assert detect_format("a.CSV") == "csv"
    assert detect_format("a.jsonl") == "jsonl"
    assert detect_format("-") == "txt"
    assert detect_format("a.data", "csv") == "csv"
    with pytest.raises(EnqueueError):
        detect_format("a.xlsx")


def test_txt_rows_keep_line_numbers_and_skip_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", "a cat\n\n  \na dog\r\n")
    rows = list(read_prompts_file(path))
    assert [(r.line, r.values["prompt"]) for r in rows] == [(1, "a cat"), (4, "a dog")]


def test_csv_rows_with_overrides_and_multiline_cells(tmp_path: Path) -> None:
    text = 'prompt,aspect_ratio,seed\n"a\nlong cat",16:9,5\na dog,,\n'
    rows = list(read_prompts_file(write(tmp_path, "p.csv", text)))
    assert [r.line for r in rows] == [2, 4]
    assert rows[0].values == {"prompt": "a\nlong cat", "aspect_ratio": "16:9", "seed": "5"}
    assert rows[1].values == {"prompt": "a dog"}
    assert rows[0].columns["seed"] == 3


def test_jsonl_errors_name_line_and_column(tmp_path: Path) -> None:
    text = '{"prompt": "ok"}\n{"prompt": "x", "resolution": "4K"}\n{"prompt": \n'
    path = write(tmp_path, "p.jsonl", text)
    with pytest.raises(InvalidInputError) as info:
        enqueue(lambda: read_prompts_file(path), dry_run=True)
    errors = info.value.errors
    assert [(e.line, e.field) for e in errors] == [(2, "resolution"), (3, None)]
    assert errors[0].column == text.splitlines()[1].index('"resolution"') + 1
    assert str(errors[0]).startswith("line 2, column 17 (resolution): '4K' is not one of")
    assert "invalid JSON" in errors[1].message and errors[1].column == 12


def test_csv_header_and_cell_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "prompt,colour\na cat,red\n")
    with pytest.raises(InvalidInputError) as info:
        enqueue(lambda: read_prompts_file(path), dry_run=True)
    assert (info.value.errors[0].line, info.value.errors[0].column) == (1, 2)
    path = write(tmp_path, "q.csv", "prompt,reasoning,seed\na cat,medium,x\n")
    with pytest.raises(InvalidInputError) as info:
        enqueue(lambda: read_prompts_file(path), dry_run=True)
    assert [(e.line, e.column, e.field) for e in info.value.errors] == [
        (2, 2, "reasoning"),
        (2, 3, "seed"),
    ]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a\x00b"}, "prompt"),
        ({"prompt": "x" * 10_001}, "prompt"),
        ({"prompt": "a", "aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"prompt": "a", "seed": True}, "seed"),
        ({"prompt": "a", "seed": -2}, "seed"),
        ({"prompt": "a", "custom_id": ""}, "custom_id"),
        ({"prompt": "a", "colour": "red"}, None),
    ],
)
def test_invalid_rows(values: dict[str, object], field: str | None) -> None:
    valid, errors = validate_row(PromptRow(3, values), Defaults())
    assert valid is None
    assert errors[0].line == 3 and errors[0].field == field


def test_row_values_override_defaults_and_zero_seed_means_random() -> None:
    defaults = Defaults(aspect_ratio="16:9", resolution="1K", reasoning="high", seed=9)
    valid, _ = validate_row(
        PromptRow(1, {"prompt": " a ", "resolution": "2K", "seed": 0}), defaults
    )
    assert valid is not None
    assert (valid.prompt, valid.aspect_ratio, valid.resolution, valid.reasoning) == (
        "a",
        "16:9",
        "2K",
        "high",
    )
    assert valid.seed is None


def test_duplicate_custom_id_names_both_lines() -> None:
    rows = [{"prompt": "a", "custom_id": "x"}, {"prompt": "b"}, {"prompt": "c", "custom_id": "x"}]
    with pytest.raises(InvalidInputError) as info:
        enqueue(rows, dry_run=True)
    assert info.value.errors[0].line == 3
    assert "first on line 1" in info.value.errors[0].message


def test_explicit_custom_id_may_not_take_a_generated_one() -> None:
    rows = [{"prompt": "a", "custom_id": "2"}, {"prompt": "b"}]
    with pytest.raises(InvalidInputError) as info:
        enqueue(rows, dry_run=True)
    assert "generated id of line 2" in info.value.errors[0].message


def test_skip_invalid_reports_what_it_skipped(sqlite_database: str) -> None:
    rows = [{"prompt": "a"}, {"prompt": ""}, {"prompt": "b", "resolution": "8K"}]
    result = enqueue(rows, skip_invalid=True, database_url=sqlite_database)
    assert (result.jobs, result.skipped, result.invalid_rows) == (1, 2, 2)  # type: ignore[attr-defined]
    assert [e.line for e in result.errors] == [2, 3]  # type: ignore[attr-defined]


def test_nothing_valid_is_an_error() -> None:
    with pytest.raises(EnqueueError):
        enqueue([{"prompt": ""}], skip_invalid=True, dry_run=True)


def test_dry_run_counts_and_prices_without_writing(sqlite_database: str) -> None:
    rows = [{"prompt": "a", "resolution": "1K"}, {"prompt": "b"}]
    result = enqueue(
        rows, dry_run=True, database_url=sqlite_database, defaults=Defaults(seeds_per_prompt=2)
    )
    assert result.summary() == {  # type: ignore[attr-defined]
        "batch_id": None,
        "jobs": 4,
        "skipped": 0,
        "estimated_cost_usd": pytest.approx(0.16),
    }
    assert jobs_of(sqlite_database) == []


def test_max_cost_refuses_an_over_budget_batch(sqlite_database: str) -> None:
    rows = [{"prompt": f"p{i}"} for i in range(10)]
    with pytest.raises(OverBudgetError) as info:
        enqueue(rows, max_cost=0.49, database_url=sqlite_database)
    assert info.value.estimate == pytest.approx(0.5)
    assert jobs_of(sqlite_database) == []
    assert enqueue(rows, max_cost=0.5, database_url=sqlite_database).jobs == 10  # type: ignore[attr-defined]


def test_seeds_concrete_distinct_and_fixed_base(sqlite_database: str) -> None:
    rows = [{"prompt": "a"}, {"prompt": "b", "seed": 100, "custom_id": "bee"}]
    result = enqueue(
        rows,
        database_url=sqlite_database,
        defaults=Defaults(seeds_per_prompt=3),
        rng=random.Random(1),
    )
    assert result.jobs == 6  # type: ignore[attr-defined]
    jobs = jobs_of(sqlite_database)
    a_seeds = [j.seed for j in jobs if j.prompt == "a"]
    assert len(set(a_seeds)) == 3 and all(1 <= s < 2**31 for s in a_seeds)
    assert sorted(j.seed for j in jobs if j.prompt == "b") == [100, 101, 102]
    assert sorted(j.custom_id for j in jobs) == ["1-1", "1-2", "1-3", "bee-1", "bee-2", "bee-3"]
    assert {j.status for j in jobs} == {JobStatus.QUEUED}
    fixed = enqueue([{"prompt": "c"}], database_url=sqlite_database, defaults=Defaults(seed=7))
    engine = create_engine(sqlite_database)
    with engine.connect() as conn:
        seed = conn.scalar(select(Job.seed).where(Job.batch_id == fixed.batch_id))  # type: ignore[attr-defined]
        batch = conn.execute(select(Batch.total_jobs, Batch.price_estimate_usd)).all()
    engine.dispose()
    assert seed == 7
    assert sorted(b.total_jobs for b in batch) == [1, 6]


def test_dedupe_skips_what_was_already_completed(sqlite_database: str) -> None:
    rows = [{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2}]
    first = enqueue(rows, database_url=sqlite_database)
    engine = create_engine(sqlite_database)
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.batch_id == first.batch_id, Job.prompt == "a")  # type: ignore[attr-defined]
            .values(status=JobStatus.COMPLETED)
        )
    engine.dispose()
    again = enqueue(rows, dedupe=True, database_url=sqlite_database)
    assert (again.jobs, again.skipped, again.deduplicated) == (1, 1, 1)  # type: ignore[attr-defined]
    no_dedupe = enqueue(rows, database_url=sqlite_database)
    assert no_dedupe.jobs == 2  # type: ignore[attr-defined]


def test_enqueue_file_streams_a_jsonl_file(sqlite_database: str, tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": f"p{i}", "resolution": "1K"}) for i in range(12_000)]
    path = write(tmp_path, "big.jsonl", "\n".join(lines) + "\n")
    result = enqueue_file(
        path, name=None, settings=SETTINGS, publish=False, database_url=sqlite_database
    )
    assert result.jobs == 12_000 and result.estimated_cost_usd == pytest.approx(360.0)
    assert len(jobs_of(sqlite_database)) == 12_000
