"""Runs ``manage.py outbox_replay`` in a subprocess on the test database.

Usage: python tests/replay_subprocess.py [outbox_replay arguments]

Environment: DATABASE_URL (the test database), KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import override_settings  # noqa: E402

with override_settings(
    OUTBOX_KAFKA_BOOTSTRAP_SERVERS=os.environ["KAFKA_BOOTSTRAP_SERVERS"], LOGGING_CONFIG=None
):
    call_command("outbox_replay", *sys.argv[1:])
