"""Model fields that reproduce the legacy column types exactly.

The Go service (GORM, MySQL dialect) created ``agent_outbox_messages`` with
``datetime(3)`` timestamps and a ``text`` ``last_error``; Django's defaults on
MySQL/MariaDB would be ``datetime(6)`` and ``longtext``. On other databases the
fields fall back to Django's native types.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.db import models

#: ``last_error`` is MySQL ``TEXT``: 65,535 bytes. Keep well under it in UTF-8.
TEXT_MAX_CHARS = 16_000


def truncate_to_millis(value: datetime.datetime) -> datetime.datetime:
    """Drop sub-millisecond digits, as ``datetime(3)`` would.

    Every backend then stores exactly the value Python holds, so a conditional
    ``UPDATE ... WHERE next_retry_at = %s`` (the relay's fence) matches everywhere.
    """
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


class MillisecondDateTimeField(models.DateTimeField):
    """``datetime(3)`` on MySQL/MariaDB, millisecond precision everywhere."""

    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "mysql":
            return "datetime(3)"
        return super().db_type(connection)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if isinstance(value, datetime.datetime):
            value = truncate_to_millis(value)
        return value

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        value = super().pre_save(model_instance, add)
        if isinstance(value, datetime.datetime):
            value = truncate_to_millis(value)
            setattr(model_instance, self.attname, value)
        return value


class ShortTextField(models.TextField):
    """``text`` (not ``longtext``) on MySQL/MariaDB."""

    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "mysql":
            return "text"
        return super().db_type(connection)


def clip_error(message: str) -> str:
    """Shorten an error text so that it fits the legacy ``text`` column."""
    if len(message) <= TEXT_MAX_CHARS:
        return message
    return message[: TEXT_MAX_CHARS - 20] + " ...[truncated]"
