"""Run the console: ``mrhub serve console``."""

from __future__ import annotations

from aiohttp import web

from services.common.logging import setup_logging
from services.common.settings import Settings
from services.console.app import create_app


def run(settings: Settings) -> None:
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.console.host,
        port=settings.console.port,
        print=None,
        access_log=None,  # our own log line per request names no identifier (app.py)
    )
