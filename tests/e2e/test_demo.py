"""`imagine demo` on a machine with no Redis, no PostgreSQL and no fal key."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

IMAGINE = [sys.executable, "-c", "from imagine.cli import main; main()"]
SETTINGS_VARS = ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "FAL_KEY", "WEBHOOK_BASE_URL")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(extra)
    env["COLUMNS"] = "120"
    return env


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline_offline(tmp_path: Path) -> None:
    done = subprocess.run(
        [*IMAGINE, "demo", "--workdir", "demo", "--timeout", "100"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp_path / "demo").glob("*.log")
    )
    assert done.returncode == 0, done.stdout + done.stderr + logs
    assert "24 completed, 0 failed" in done.stdout
    assert "Gallery: " in done.stdout

    db = sqlite3.connect(tmp_path / "demo" / "imagine.sqlite3")
    statuses = db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    assert statuses == [("COMPLETED", 24)]
    assert db.execute("SELECT count(*) FROM jobs WHERE seed IS NULL").fetchone() == (0,)
    images = db.execute(
        "SELECT archive_path, sha256, archived_width, width FROM images ORDER BY id"
    ).fetchall()
    assert len(images) == 24
    for path, sha256, archived_width, width in images:
        data = Path(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256
        assert archived_width == width
        assert Path(path).is_relative_to(tmp_path / "demo" / "archive")


def test_the_demo_refuses_to_spend_money_without_real(tmp_path: Path) -> None:
    secret = "key-id:super-secret-demo-value"
    done = subprocess.run(
        [*IMAGINE, "demo", "--workdir", "demo"],
        cwd=tmp_path,
        env=clean_env(FAL_KEY=secret),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "--real" in done.stderr
    assert "super-secret" not in done.stdout + done.stderr
    assert not (tmp_path / "demo" / "imagine.sqlite3").exists()
