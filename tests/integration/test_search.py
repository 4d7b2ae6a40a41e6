"""Prompt search: substring, case-insensitive, through the backend's index on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from models import Batch, Job, prompt_hash
from models.db import make_engine
from models.search import prompt_matches

MODEL = "imagineart/imagineart-2.0-preview/text-to-image"
PROMPTS = [
    'A "quoted" Cotton_Cat, 100% wool',
    "a dog on a skateboard",
    "Lighthouse at dusk, oil painting",
    "cat",
]


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    engine: Engine = make_engine(database_url)
    with sessionmaker(engine)() as s:
        yield s
    engine.dispose()


@pytest.fixture
def ids(session: Session) -> list[uuid.UUID]:
    batch = Batch(name="s", model=MODEL, params={})
    session.add(batch)
    session.flush()
    job_ids = [uuid.uuid4() for _ in PROMPTS]
    session.execute(
        insert(Job),
        [
            {
                "id": job_id,
                "batch_id": batch.id,
                "seq": n,
                "custom_id": str(n),
                "prompt": prompt,
                "prompt_hash": prompt_hash(MODEL, prompt, "1:1", "1K", "low", n),
                "aspect_ratio": "1:1",
                "resolution": "1K",
                "reasoning": "low",
                "seed": n,
            }
            for n, (job_id, prompt) in enumerate(zip(job_ids, PROMPTS, strict=True))
        ],
    )
    session.commit()
    return job_ids


def found(session: Session, needle: str) -> set[str]:
    dialect = session.get_bind().dialect.name
    return set(session.scalars(select(Job.prompt).where(prompt_matches(dialect, needle))))


@pytest.mark.usefixtures("ids")
def test_search_is_a_case_insensitive_substring_match(session: Session) -> None:
    assert found(session, "COTTON_cat") == {PROMPTS[0]}
    assert found(session, "cat") == {PROMPTS[0], PROMPTS[3]}
    assert found(session, '"quoted"') == {PROMPTS[0]}
    assert found(session, "100%") == {PROMPTS[0]}
    assert found(session, "g_o") == set()  # _ is a character, not a wildcard ("dog on")
    assert found(session, "a d") == {PROMPTS[1]}
    assert found(session, "ca") == {PROMPTS[0], PROMPTS[3]}  # shorter than a trigram: a scan
    assert found(session, "zebra") == set()


def test_the_index_follows_updates_and_deletes(session: Session, ids: list[uuid.UUID]) -> None:
    session.execute(update(Job).where(Job.id == ids[2]).values(prompt="A zebra crossing"))
    session.execute(delete(Job).where(Job.id == ids[1]))
    session.commit()
    assert found(session, "zebra") == {"A zebra crossing"}
    assert found(session, "lighthouse") == set()
    assert found(session, "skateboard") == set()


@pytest.mark.usefixtures("ids")
def test_the_search_uses_the_index(session: Session) -> None:
    dialect = session.get_bind().dialect.name
    stmt = select(Job.id).where(prompt_matches(dialect, "lighthouse"))
    compiled = stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    if dialect == "postgresql":
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(session.scalars(text(f"EXPLAIN {compiled}")))
        assert "ix_jobs_prompt_trgm" in plan
    else:
        rows = session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")).all()
        plan = "\n".join(str(row[-1]) for row in rows)
        assert "VIRTUAL TABLE INDEX" in plan
