"""WSGI entry point for production: `gunicorn -w 4 -b 0.0.0.0:8000 webhook_receiver.wsgi:app`."""

from __future__ import annotations

import logging

from imagine.settings import get_settings
from webhook_receiver import create_app

logging.basicConfig(
    level=get_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)

app = create_app()
