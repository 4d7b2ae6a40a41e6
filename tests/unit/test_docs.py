"""The README documents every setting."""

from __future__ import annotations

from pathlib import Path

from imagine.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_row_in_the_readme_table() -> None:
    text = README.read_text()
    names = [name.upper() for name in Settings.model_fields]
    missing = [name for name in names if f"| `{name}` |" not in text]
    assert missing == []
