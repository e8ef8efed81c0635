"""Checks of the CloudEvents headers the records may carry: OUTBOX_CLOUDEVENTS (E031) and
OUTBOX_CLOUDEVENTS_SOURCE (E030, W030)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from django_outbox.cloudevents import source_problem
from django_outbox.conf import outbox_settings


def check_cloudevents(**kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    enabled = outbox_settings.raw("CLOUDEVENTS")
    if not isinstance(enabled, bool):
        messages.append(
            Error(
                f"OUTBOX_CLOUDEVENTS is {enabled!r}.",
                hint="Use True (add the CloudEvents headers to every record) or False.",
                id="django_outbox.E031",
            )
        )
    source = outbox_settings.raw("CLOUDEVENTS_SOURCE")
    if source is None:
        return messages
    problem = source_problem(source)
    if problem:
        messages.append(
            Error(
                f"OUTBOX_CLOUDEVENTS_SOURCE {problem}.",
                hint="Use a URI reference naming your service, e.g. '/billing' or "
                "'urn:example:billing', or None for '/django-outbox/<database alias>'.",
                id="django_outbox.E030",
            )
        )
    elif enabled is not True:
        messages.append(
            Warning(
                "OUTBOX_CLOUDEVENTS_SOURCE is set but OUTBOX_CLOUDEVENTS is not True: "
                "records carry no CloudEvents headers.",
                hint="Set OUTBOX_CLOUDEVENTS = True, or remove OUTBOX_CLOUDEVENTS_SOURCE.",
                id="django_outbox.W030",
            )
        )
    return messages
