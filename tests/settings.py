"""Test settings: the demo project plus a second database alias, ``other``.

DATABASE_URL picks the database (SQLite by default, PostgreSQL or MariaDB by URL);
``other`` is a second database on the same server (OTHER_DATABASE_URL overrides).

SQLite test databases are files, not Django's in-memory default, so that the
subprocess tests (the real ``outbox_relay`` / ``outbox_consume`` commands) can open
them too. Each pytest run has a directory of its own, so concurrent runs do not
collide: OUTBOX_TEST_SQLITE_DIR, which this module sets on first import (subprocesses
inherit it); tests/conftest.py creates the directory and removes it at the end.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from testproject.settings import *  # noqa: F403
from testproject.settings import BASE_DIR, DATABASES, database

SQLITE_DIR_VARIABLE = "OUTBOX_TEST_SQLITE_DIR"

if "OTHER_DATABASE_URL" in os.environ:
    DATABASES["other"] = database("OTHER_DATABASE_URL", "")
else:
    other = dict(DATABASES["default"])
    if other["ENGINE"].endswith("sqlite3"):
        other["NAME"] = str(BASE_DIR / "other.sqlite3")
    else:
        other["NAME"] = f"{other['NAME']}_other"
    other["TEST"] = dict(other.get("TEST", {}))
    DATABASES["other"] = other


#: This run's directory for SQLite test databases. Only named here (importing settings
#: must not leave anything behind); tests/conftest.py creates and removes it.
_unique = f"django-outbox-tests-{os.getpid()}-{uuid.uuid4().hex[:8]}"
SQLITE_TEST_DIR = Path(
    os.environ.setdefault(SQLITE_DIR_VARIABLE, str(Path(tempfile.gettempdir(), _unique)))
)

for alias, config in DATABASES.items():
    if not config["ENGINE"].endswith("sqlite3"):
        continue
    config["TEST"] = {**config.get("TEST", {}), "NAME": str(SQLITE_TEST_DIR / f"{alias}.sqlite3")}
    # testproject/settings.py sets WAL and a busy timeout (a test polls the table while a
    # relay thread or subprocess writes). The suite keeps Django's default DEFERRED
    # transactions, the mode a project gets unless it chooses otherwise (the demo's
    # IMMEDIATE makes every transaction, reads too, queue for the write lock).
    config["OPTIONS"].pop("transaction_mode", None)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
OUTBOX_DEFAULT_TOPIC = "outbox.test"

# django_outbox.tasks: tests/task_functions.py declares its tasks on this backend.
TASKS = {"default": {"BACKEND": "django_outbox.tasks.OutboxBackend"}}
