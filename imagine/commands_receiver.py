"""`imagine receiver`: the webhook receiver and JSON API on werkzeug, for development."""

from __future__ import annotations

import click


@click.command("receiver")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
def receiver(host: str, port: int) -> None:
    """Serve /webhooks/fal, /api, /healthz and /metrics (production: gunicorn, see README)."""
    from werkzeug.serving import run_simple

    from webhook_receiver import create_app

    run_simple(host, port, create_app(), threaded=True, use_reloader=False)
