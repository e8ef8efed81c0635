"""Test settings: the demo project plus a second database alias, ``other``.

DATABASE_URL picks the database (SQLite by default, PostgreSQL or MariaDB by URL);
``other`` is a second database on the same server (OTHER_DATABASE_URL overrides).
"""

from __future__ import annotations

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import BASE_DIR, DATABASES, database

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

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
OUTBOX_DEFAULT_TOPIC = "outbox.test"
OUTBOX_FAST_PATH = True
