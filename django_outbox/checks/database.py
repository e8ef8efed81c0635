"""Checks of the database settings: which aliases hold the outbox and are served by the
relay (E002, E003, E012), and how times are stored in the table shared with Go (W003)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_outbox.conf import outbox_settings


def check_databases(**kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    known = set(settings.DATABASES)
    database = outbox_settings.raw("DATABASE")
    if database not in known:
        messages.append(
            Error(
                f"OUTBOX_DATABASE is {database!r}, which is not in DATABASES.",
                hint=f"Use one of {sorted(known)}.",
                id="django_outbox.E002",
            )
        )
    aliases = outbox_settings.raw("DATABASES")
    if aliases is not None:
        listed = aliases.split(",") if isinstance(aliases, str) else aliases
        unknown = [a for a in listed if not isinstance(a, str) or a.strip() not in known]
        if not isinstance(listed, list | tuple) or not listed or unknown:
            messages.append(
                Error(
                    f"OUTBOX_DATABASES is {aliases!r}; {unknown or 'it'} is not a DATABASES alias.",
                    hint=f"List the aliases the relay serves, from {sorted(known)}, or leave it "
                    "unset to serve OUTBOX_DATABASE only.",
                    id="django_outbox.E003",
                )
            )
            return messages
    messages.extend(_unserved_databases(known))
    return messages


def _unserved_databases(known: set[str]) -> list[CheckMessage]:
    """E012: publish_event() writes to OUTBOX_DATABASE by default; a relay must serve it.

    (``publish_event(using=...)`` refuses any alias the relay does not serve.)
    """
    served = outbox_settings.databases
    database = outbox_settings.database
    if database in served or database not in known:
        return []
    return [
        Error(
            f"OUTBOX_DATABASE is {database!r}, which the relay does not serve "
            f"(OUTBOX_DATABASES is {served}): events published there would never leave.",
            hint=f"Add {database!r} to OUTBOX_DATABASES, or point OUTBOX_DATABASE at one of "
            f"{served}.",
            id="django_outbox.E012",
        )
    ]


def check_time_zone(**kwargs: Any) -> list[CheckMessage]:
    if settings.USE_TZ:
        return []
    return [
        Warning(
            "USE_TZ is False: Django reads and writes the outbox table's times as naive "
            "local times, while the Go service sharing it stores UTC.",
            hint="Set USE_TZ = True (and the Go DSN's parseTime=true&loc=UTC); see "
            "docs/go-service.rst, 'Times'.",
            id="django_outbox.W003",
        )
    ]
