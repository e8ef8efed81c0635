"""The one place that touches private APIs of Django and kafka-python.

Each use is pinned by a test (tests/test_compat.py) against the versions we
support, so that an upgrade that changes them fails there, loudly.
"""

from __future__ import annotations

from typing import Any


def on_commit_callbacks(connection: Any) -> list[Any]:
    """Django's list of the on-commit callbacks of ``connection``'s transaction.

    Each entry is ``(savepoint ids, callable, robust)`` (Django 4.2 to 5.2).
    """
    return list(connection.run_on_commit)
