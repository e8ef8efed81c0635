"""tests.settings for relay subprocesses, plus knobs from the environment.

OUTBOX_TEST_PRODUCER  JSON of extra kafka-python producer options
OUTBOX_TEST_LEASE     OUTBOX_LEASE_SECONDS
OUTBOX_TEST_METRICS_INTERVAL  OUTBOX_METRICS_INTERVAL
"""

from __future__ import annotations

import json
import os

from testproject import settings as demo_settings
from tests.settings import *  # noqa: F403

OUTBOX_KAFKA_PRODUCER = json.loads(os.environ.get("OUTBOX_TEST_PRODUCER", "{}"))
OUTBOX_LEASE_SECONDS = float(os.environ.get("OUTBOX_TEST_LEASE", "60"))
OUTBOX_METRICS_INTERVAL = float(os.environ.get("OUTBOX_TEST_METRICS_INTERVAL", "15"))
LOGGING = demo_settings.LOGGING  # the demo's INFO logging to stderr
