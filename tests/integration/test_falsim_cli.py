"""`imagine falsim` starts, prints its base and JWKS URLs, serves, and stops on SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
from click.testing import CliRunner

from falsim.cli import falsim_command


def test_cli_serves_and_prints_urls() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from falsim.cli import falsim_command; falsim_command()",
            "--port",
            "0",
            "--time-scale",
            "0",
            "--key",
            "cli:secret",
            "--webhook-drop-rate",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_line = proc.stdout.readline().strip()
        jwks_line = proc.stdout.readline().strip()
        assert base_line.startswith("falsim base URL: http://127.0.0.1:")
        base = base_line.rsplit(" ", 1)[1]
        assert jwks_line == f"falsim JWKS URL: {base}/.well-known/jwks.json"
        assert httpx.get(f"{base}/.well-known/jwks.json").json()["keys"]
        config = httpx.get(f"{base}/_sim/config").json()
        assert config["faults"]["webhook_drop_rate"] == 0.5
        assert config["key"] == "<set>"
        submit = httpx.post(
            f"{base}/fal-ai/any/model",
            json={"prompt": "x"},
            headers={"Authorization": "Key cli:secret"},
        )
        assert submit.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_cli_rejects_a_bad_key() -> None:
    result = CliRunner().invoke(falsim_command, ["--key", "no-colon"])
    assert result.exit_code == 2
    assert "key_id:key_secret" in result.output
