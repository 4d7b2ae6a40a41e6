"""Shared fixtures: real PostgreSQL, real Redis, SQLite, and the fal simulator."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.falsim",
    "tests.fixtures.gallery",
    "tests.fixtures.receiver",
    "tests.fixtures.pipeline",
]
