"""Prompt search through one interface: a trigram GIN index on PostgreSQL, FTS5 on SQLite.

Both find the text as a case-insensitive substring, like ILIKE '%text%', but through an index, so a
search stays fast at millions of jobs. The index structures live in migration 0002.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, column, select, table

from models.job import Job

# Trigram indexes cannot serve shorter needles; those fall back to a scan.
MIN_INDEXED_CHARS = 3
_fts = table("jobs_fts", column("job_id"))


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards escaped by backslashes."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def prompt_matches(dialect: str, text: str) -> ColumnElement[bool]:
    """A condition on jobs: the prompt contains `text`, ignoring case."""
    if dialect == "sqlite" and len(text) >= MIN_INDEXED_CHARS:
        # A quoted FTS5 phrase of trigrams is exactly a substring search; quotes are doubled.
        phrase = '"' + text.replace('"', '""') + '"'
        matching = select(_fts.c.job_id).where(column("jobs_fts").op("MATCH")(phrase))
        return Job.id.in_(matching)
    return Job.prompt.ilike(f"%{escape_like(text)}%", escape="\\")
