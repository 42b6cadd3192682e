"""Logging for the processes that bring none of their own: the flask commands, the terminal, Flower's
launcher, the Celery workers (worker_hijack_root_logger is off)."""

from __future__ import annotations

import logging
import os


def configure_logging() -> None:
    """Plain stderr logging, at LOG_LEVEL (INFO), unless the process has set up logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
