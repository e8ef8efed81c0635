"""tests.settings for relay subprocesses, plus knobs from the environment.

OUTBOX_TEST_PRODUCER  JSON of extra kafka-python producer options
OUTBOX_TEST_LEASE     OUTBOX_LEASE_SECONDS
"""

from __future__ import annotations

import json
import os

from tests.settings import *  # noqa: F403

OUTBOX_FAST_PATH = False
OUTBOX_KAFKA_PRODUCER = json.loads(os.environ.get("OUTBOX_TEST_PRODUCER", "{}"))
OUTBOX_LEASE_SECONDS = float(os.environ.get("OUTBOX_TEST_LEASE", "60"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"django_outbox": {"handlers": ["console"], "level": "INFO"}},
}
