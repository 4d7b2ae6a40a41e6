"""Settings come from the environment and a .env file, and never show the fal key."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagine.settings import Settings

SECRET = "key-id-123:very-secret-value"


def test_defaults_match_the_documentation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.database_url == "sqlite:///var/imagine.sqlite3"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.fal_queue_url == "https://queue.fal.run"
    assert s.fal_jwks_url == "https://rest.fal.ai/.well-known/jwks.json"
    assert s.fal_model == "imagineart/imagineart-2.0-preview/text-to-image"
    assert s.max_in_flight == 40
    assert s.polling_mode
    assert s.celery_broker_url == s.redis_url


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MAX_IN_FLIGHT=7\nWEBHOOK_BASE_URL=https://hooks.example/\n")
    monkeypatch.setenv("FAL_QUEUE_URL", "http://127.0.0.1:8765/")
    s = Settings()
    assert s.max_in_flight == 7
    assert s.webhook_base_url == "https://hooks.example"
    assert s.fal_queue_url == "http://127.0.0.1:8765"
    assert not s.polling_mode


def test_the_fal_key_never_shows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAL_KEY", SECRET)
    s = Settings()
    assert s.fal_key is not None
    assert s.fal_key.get_secret_value() == SECRET
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert SECRET not in text
        assert "very-secret" not in text


def test_bad_values_are_refused_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAX_IN_FLIGHT", "0")
    with pytest.raises(ValueError, match="max_in_flight"):
        Settings()
