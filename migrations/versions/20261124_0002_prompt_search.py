"""prompt search: trigram index on PostgreSQL, FTS5 trigram table on SQLite

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 18:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept out of the models on purpose (migrations/env.py leaves them out of autogenerate): they are
# backend-specific search structures, reached only through models.search.
SQLITE_UP = [
    "CREATE VIRTUAL TABLE jobs_fts USING fts5(prompt, job_id UNINDEXED, tokenize='trigram')",
    "INSERT INTO jobs_fts (rowid, prompt, job_id) SELECT rowid, prompt, id FROM jobs",
    """CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO jobs_fts (rowid, prompt, job_id) VALUES (new.rowid, new.prompt, new.id);
    END""",
    """CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN
        DELETE FROM jobs_fts WHERE rowid = old.rowid;
    END""",
    """CREATE TRIGGER jobs_fts_update AFTER UPDATE OF prompt ON jobs BEGIN
        UPDATE jobs_fts SET prompt = new.prompt WHERE rowid = old.rowid;
    END""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS jobs_fts_update",
    "DROP TRIGGER IF EXISTS jobs_fts_delete",
    "DROP TRIGGER IF EXISTS jobs_fts_insert",
    "DROP TABLE IF EXISTS jobs_fts",
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX ix_jobs_prompt_trgm ON jobs USING gin (prompt gin_trgm_ops)")
    elif dialect == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_jobs_prompt_trgm")
    elif dialect == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
