"""The `imagine` command line: one surface for people, scripts, the README and CI."""

from __future__ import annotations

import logging
import sys

import click

from falsim.cli import falsim_command
from imagine.commands_demo import demo
from imagine.commands_history import COMMANDS as HISTORY_COMMANDS
from imagine.commands_pipeline import COMMANDS as PIPELINE_COMMANDS
from imagine.commands_receiver import receiver
from imagine.settings import get_settings


def _database_url(url: str | None) -> str:
    return url or get_settings().database_url


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imagine-batch")
def main() -> None:
    """Batch text-to-image generation on fal.ai's queue API."""
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@main.group()
def db() -> None:
    """Database schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.option("--database-url", help="Defaults to DATABASE_URL.")
def db_upgrade(revision: str, database_url: str | None) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from models import migrate

    migrate.upgrade(_database_url(database_url), revision)


@db.command("downgrade")
@click.argument("revision")
@click.option("--database-url", help="Defaults to DATABASE_URL.")
def db_downgrade(revision: str, database_url: str | None) -> None:
    """Migrate the database down to REVISION (`base` removes every table)."""
    from models import migrate

    migrate.downgrade(_database_url(database_url), revision)


@db.command("current")
@click.option("--database-url", help="Defaults to DATABASE_URL.")
def db_current(database_url: str | None) -> None:
    """Print the revision the database is at."""
    from models import migrate

    click.echo(migrate.current(_database_url(database_url)) or "(empty: run `imagine db upgrade`)")


@db.command("check")
@click.option("--database-url", help="Defaults to DATABASE_URL.")
def db_check(database_url: str | None) -> None:
    """Fail when the models and the migrated schema differ."""
    from models import migrate

    migrate.check(_database_url(database_url))
    click.echo("schema matches the models")


main.add_command(receiver)
main.add_command(demo)
main.add_command(falsim_command)
for _command in PIPELINE_COMMANDS + HISTORY_COMMANDS:
    main.add_command(_command)
