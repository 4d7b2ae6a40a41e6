"""Alembic driven from code: the `imagine db` commands and the tests use these."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str, stdout: io.TextIOBase | None = None) -> Config:
    """An Alembic config for `database_url`, using the repository's migrations folder."""
    kwargs = {"stdout": stdout} if stdout is not None else {}
    config = Config(str(ROOT / "alembic.ini"), **kwargs)  # type: ignore[arg-type]
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database up to `revision`."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database down to `revision` (`base` empties it)."""
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str:
    """The revision the database is at, as Alembic prints it."""
    out = io.StringIO()
    command.current(alembic_config(database_url, stdout=out))
    return out.getvalue().strip()


def check(database_url: str) -> None:
    """Raise when the models and the migrated schema differ (`alembic check`)."""
    command.check(alembic_config(database_url))
