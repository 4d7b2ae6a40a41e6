"""The history commands through click's CliRunner on SQLite and PostgreSQL, with real archives."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update

import models.queries
from imagine import commands_history, commands_pipeline
from imagine.cli import main
from models import Image, Job
from models.db import make_engine
from tests.fixtures.gallery import XSS_PROMPT, GalleryData

JOB_FIELDS = {
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
    "images",
}
IMAGE_FIELDS = {"url", "width", "height", "content_type", "file_size", "sha256", "local_path"}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def jobs_json(*args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ok("jobs", "--json", *args).stdout)
    return found


def set_job(data: GalleryData, which: str, **values: Any) -> None:
    engine = make_engine(data.database_url)
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == data.jobs[which]).values(**values))
    engine.dispose()


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the commands believe stdout is a terminal, so they print rich tables."""
    monkeypatch.setattr(commands_history, "is_terminal", lambda: True)
    monkeypatch.setattr(commands_pipeline, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "120")


def test_batches_json_and_plain(history_env: GalleryData) -> None:
    listed = json.loads(ok("batches", "--json").stdout)
    assert [b["name"] for b in listed] == ["Still running", "Autumn sample"]
    assert listed[1]["counts"]["COMPLETED"] == 5
    assert (listed[0]["done"], listed[0]["total"]) == (4, 10)
    assert len(json.loads(ok("batches", "--json", "--limit", "1").stdout)) == 1
    plain = ok("batches").stdout.splitlines()
    assert plain[1].startswith(f"{history_env.batch_id}  7/7  completed=5 failed=1 cancelled=1")


def test_batches_table_on_a_terminal(history_env: GalleryData, terminal: None) -> None:
    out = ok("batches").stdout
    assert "2 batches" in out
    assert "Autumn sample" in out
    assert "7/7 100%" in out


def test_jobs_filters(history_env: GalleryData) -> None:
    batch = str(history_env.batch_id)
    everything = jobs_json("--batch", batch)
    assert len(everything) == 7
    assert set(everything[0]) >= JOB_FIELDS
    assert set(everything[0]["images"][0]) >= IMAGE_FIELDS if everything[0]["images"] else True
    by_search = jobs_json("--search", "LIGHTHOUSE")
    assert [j["custom_id"] for j in by_search] == ["lighthouse"]
    assert [j["custom_id"] for j in jobs_json("--search", "<script>")] == ["xss"]
    assert [j["custom_id"] for j in jobs_json("--seed", "1003", "--batch", batch)] == ["sailor"]
    assert [j["custom_id"] for j in jobs_json("--status", "FAILED")] == ["stairs"]
    window = jobs_json("--since", "2026-11-24T10:00:01", "--until", "2026-11-24T10:00:03Z")
    assert sorted(j["custom_id"] for j in window) == ["lighthouse", "xss"]
    assert len(jobs_json("--since", "100000d", "--batch", batch)) == 7
    assert len(jobs_json("--limit", "3", "--batch", batch)) == 3
    bad = run("jobs", "--since", "last tuesday")
    assert bad.exit_code == 2
    assert "age like" in bad.output


def test_jobs_table_on_a_terminal(history_env: GalleryData, terminal: None) -> None:
    out = ok("jobs", "--batch", str(history_env.batch_id)).stdout
    assert "7 jobs" in out
    assert "COMPLETED" in out
    assert "<script>" in out
    assert "1003" in out  # a wide terminal shows the seed column


def test_show_json_has_everything_known(history_env: GalleryData) -> None:
    detail = json.loads(ok("show", str(history_env.jobs["xss"]), "--json").stdout)
    assert set(detail) >= JOB_FIELDS | {"attempt_log", "webhook_events"}
    assert detail["prompt"] == XSS_PROMPT
    [image] = detail["images"]
    assert image["sha256"] == history_env.sha256["xss"]
    assert Path(image["local_path"]).is_file()
    assert detail["attempt_log"][0]["outcome"] == "accepted"
    assert detail["webhook_events"][0]["outcome"] == "applied"


def test_show_prints_user_text_literally(history_env: GalleryData) -> None:
    set_job(history_env, "fox", prompt="[bold red]a loud fox[/bold red] [/nope]")
    out = ok("show", str(history_env.jobs["fox"])).stdout
    assert "[bold red]a loud fox[/bold red] [/nope]" in out
    assert "webhook events" in out
    assert history_env.sha256["fox"] in out
    missing = run("show", str(uuid.uuid4()))
    assert missing.exit_code == 1
    assert "no job" in missing.output


def test_export_jsonl_pages_through_the_batch(
    history_env: GalleryData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[int] = []
    real = models.queries.list_jobs

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["limit"])
        return real(*args, **kwargs)

    monkeypatch.setattr(models.queries, "list_jobs", counting)
    monkeypatch.setattr(commands_history, "EXPORT_PAGE", 2)
    target = tmp_path / "out.jsonl"
    result = ok("export", str(history_env.batch_id), "--format", "jsonl", "-o", str(target))
    assert "exported 7 of 7 jobs" in result.stderr
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert len({job["id"] for job in lines}) == len(lines) == 7
    assert calls == [2, 2, 2, 2]
    assert json.loads(ok("export", str(history_env.batch_id)).stdout.splitlines()[0])["id"]


def test_export_csv_has_a_row_per_image(history_env: GalleryData) -> None:
    out = ok("export", str(history_env.batch_id), "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 7
    by_id = {row["custom_id"]: row for row in rows}
    assert by_id["xss"]["prompt"] == XSS_PROMPT
    assert by_id["fox"]["image_sha256"] == history_env.sha256["fox"]
    assert by_id["stairs"]["image_sha256"] == ""
    assert by_id["stairs"]["error_type"] == "ValidationError"


def test_export_zip_holds_images_and_a_manifest(history_env: GalleryData, tmp_path: Path) -> None:
    set_job(history_env, "ramen", custom_id="../../etc/ramen")
    engine = make_engine(history_env.database_url)
    with engine.begin() as conn:
        path = conn.scalar(
            update(Image)
            .where(Image.id == history_env.images["sailor"])
            .values(sha256="0" * 64)
            .returning(Image.archive_path)
        )
    engine.dispose()
    Path(str(path)).unlink()
    target = tmp_path / "batch.zip"
    result = ok("export", str(history_env.batch_id), "--format", "zip", "-o", str(target))
    assert "exported 7 jobs and 4 images" in result.stderr
    assert "1 images are not in the archive" in result.stderr
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
        assert names[-1] == "manifest.jsonl"
        assert all(".." not in name.split("/") for name in names)
        manifest = [json.loads(line) for line in zf.read("manifest.jsonl").splitlines()]
        assert len(manifest) == 7
        images = {job["custom_id"]: job["images"] for job in manifest}
        assert images["fox"][0]["zip_path"] == "images/fox-0.png"
        ramen = images["../../etc/ramen"][0]["zip_path"]
        assert ramen == f"images/.._.._etc_ramen~{history_env.jobs['ramen']}-0.png"
        assert images["sailor"][0]["zip_path"] is None
        assert images["stairs"] == []
        for job in manifest:
            for image in job["images"]:
                if image["zip_path"]:
                    body = zf.read(image["zip_path"])
                    assert hashlib.sha256(body).hexdigest() == image["sha256"]
        assert images["fox"][0]["sha256"] == history_env.sha256["fox"]
        assert len([n for n in names if n.startswith("images/")]) == 4


def test_export_refuses_unknown_batches(history_env: GalleryData) -> None:
    unknown = run("export", str(uuid.uuid4()))
    assert unknown.exit_code == 1
    assert "no batch" in unknown.output
    assert run("export", "not-an-id").exit_code == 2
