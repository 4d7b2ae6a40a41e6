"""`imagine falsim`: run the offline fal-compatible queue server in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import click

from falsim.config import MODEL_ERROR_TYPES, SimConfig
from falsim.exceptions import SimConfigError
from falsim.server import serve_forever

_RATE = click.FloatRange(0.0, 1.0)


@click.command("falsim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0: any free one).")
@click.option("--public-url", default=None, help="Base URL put in answers instead of the Host.")
@click.option("--key", default=None, help="Demand this exact `key_id:key_secret` (default: any).")
@click.option("--user-id", default="falsim-user", show_default=True, help="Webhook user id.")
@click.option("--seed", default=None, type=int, help="Seed of every random choice and the key.")
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Multiplies every duration; 0 makes generation instant.",
)
@click.option(
    "--latency", type=click.Choice(["fixed", "lognormal"]), default="lognormal", show_default=True
)
@click.option("--median-1k", default=4.0, show_default=True, help="Median seconds of a 1K image.")
@click.option("--p95-1k", default=7.0, show_default=True, help="p95 seconds of a 1K image.")
@click.option("--median-2k", default=12.0, show_default=True, help="Median seconds of a 2K image.")
@click.option("--p95-2k", default=20.0, show_default=True, help="p95 seconds of a 2K image.")
@click.option("--reasoning-high-factor", default=1.6, show_default=True)
@click.option("--webhook-attempts", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--webhook-timeout", default=15.0, show_default=True, help="Seconds per attempt.")
@click.option("--webhook-backoff", default=15.0, show_default=True, help="First retry gap.")
@click.option("--webhook-concurrency", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--webhook-on-cancel/--no-webhook-on-cancel", default=False, show_default=True)
@click.option("--abort-on-cancel/--no-abort-on-cancel", default=False, show_default=True)
@click.option("--submit-429-rate", default=0.0, type=_RATE)
@click.option("--submit-503-rate", default=0.0, type=_RATE)
@click.option("--retry-after-seconds", default=1, type=click.IntRange(min=0))
@click.option("--model-error-rate", default=0.0, type=_RATE)
@click.option(
    "--model-error-types",
    default=",".join(MODEL_ERROR_TYPES),
    show_default=True,
    help="Comma-separated kinds the model-error fault draws from.",
)
@click.option("--webhook-drop-rate", default=0.0, type=_RATE)
@click.option("--webhook-duplicate-rate", default=0.0, type=_RATE)
@click.option("--webhook-delay-rate", default=0.0, type=_RATE)
@click.option("--webhook-delay-max", default=30.0, show_default=True)
@click.option("--webhook-null-payload-rate", default=0.0, type=_RATE)
@click.option("--webhook-slow-rate", default=0.0, type=_RATE)
@click.option("--log-level", default="INFO", show_default=True)
def falsim_command(log_level: str, model_error_types: str, **options: Any) -> None:
    """Run falsim, an offline fal-compatible queue server with signed webhooks and faults."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options["model_error_types"] = [t.strip() for t in model_error_types.split(",") if t.strip()]
    try:
        config = SimConfig().updated(options, running=False)
    except SimConfigError as exc:
        raise click.BadParameter(str(exc)) from exc

    def announce(base_url: str, jwks_url: str) -> None:
        click.echo(f"falsim base URL: {base_url}")
        click.echo(f"falsim JWKS URL: {jwks_url}")
        click.echo(f"point clients at {base_url} (FAL_QUEUE_URL={base_url})", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, announce))
