"""Runs ``manage.py outbox_consume`` in a subprocess, with the test handlers registered.

Usage: python tests/consumer_subprocess.py [outbox_consume arguments]

Environment: DATABASE_URL (the test database), KAFKA_BOOTSTRAP_SERVERS, and
OUTBOX_TEST_MARKERS  a directory; the slow handler creates ``started-<n>`` there
OUTBOX_TEST_SLOW     seconds the ``test.slow`` handler sleeps (default 1)
OUTBOX_TEST_KILL_AT  SIGKILL this process right after the transaction of the n-th handler
                     commits (the record's own with --batch-size 1, else its chunk's)
OUTBOX_TEST_KILL_IN  SIGKILL this process inside the n-th handler, before anything commits
OUTBOX_TEST_CONSUMER_OPTIONS  JSON of kafka-python consumer options (default: FAST_GROUP)
OUTBOX_TEST_CLIENT_ID  the Kafka client id (tells the group's members apart)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import override_settings  # noqa: E402

from django_outbox.registry import registry  # noqa: E402
from tests.consumer_support import COUNTER, FAST_GROUP, count_handler  # noqa: E402
from tests.scale_support import EVENT_TYPE as SCALE_STEP  # noqa: E402
from tests.scale_support import record_effect  # noqa: E402

SLOW = "test.slow"
handled = 0


def slow_handler(event):
    global handled
    handled += 1
    markers = Path(os.environ["OUTBOX_TEST_MARKERS"])
    (markers / f"started-{handled}").touch()
    time.sleep(float(os.environ.get("OUTBOX_TEST_SLOW", "1")))
    count_handler(event)


def killing_counter(event):
    global handled
    handled += 1
    count_handler(event)
    if handled == int(os.environ.get("OUTBOX_TEST_KILL_AT", "0")):
        # After the handler's transaction commits, before the consumer commits the offset.
        transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
    if handled == int(os.environ.get("OUTBOX_TEST_KILL_IN", "0")):
        # Mid-chunk: earlier handlers ran, their effects are not committed yet.
        os.kill(os.getpid(), signal.SIGKILL)


registry.register(SLOW, slow_handler)
registry.register(COUNTER, killing_counter)
registry.register(SCALE_STEP, record_effect)

arguments = sys.argv[1:]
group = arguments[arguments.index("--group") + 1] if "--group" in arguments else None
options = json.loads(os.environ.get("OUTBOX_TEST_CONSUMER_OPTIONS") or json.dumps(FAST_GROUP))
if os.environ.get("OUTBOX_TEST_CLIENT_ID"):
    options["client_id"] = os.environ["OUTBOX_TEST_CLIENT_ID"]

with override_settings(
    OUTBOX_CONSUMER_GROUP=group or "django-outbox",  # the group owns the outbox rows
    OUTBOX_KAFKA_CONSUMER=options,
    OUTBOX_KAFKA_BOOTSTRAP_SERVERS=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    LOGGING_CONFIG=None,
):
    call_command("outbox_consume", *sys.argv[1:])
