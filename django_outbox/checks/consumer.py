"""Checks of the consumer's settings and handlers: the group (E009), what it does with an
event type it has no handler for (E010), handlers that disagree with ``batch=`` (W060, W061)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from django_outbox.conf import outbox_settings

POLICIES = ("skip", "retry", "dead")


def check_consumer_group(**kwargs: Any) -> list[CheckMessage]:
    group = outbox_settings.raw("CONSUMER_GROUP")
    if isinstance(group, str) and group.strip():
        return []
    return [
        Error(
            f"OUTBOX_CONSUMER_GROUP is {group!r}.",
            hint="Use a non-empty consumer group id, e.g. 'billing-service'.",
            id="django_outbox.E009",
        )
    ]


def check_unknown_event_policy(**kwargs: Any) -> list[CheckMessage]:
    policy = outbox_settings.raw("UNKNOWN_EVENT_POLICY")
    if policy in POLICIES:
        return []
    return [
        Error(
            f"OUTBOX_UNKNOWN_EVENT_POLICY is {policy!r}.",
            hint=f"Use one of {', '.join(POLICIES)}.",
            id="django_outbox.E010",
        )
    ]


def check_handlers(**kwargs: Any) -> list[CheckMessage]:
    """Handlers whose argument's annotation disagrees with ``batch=`` (W060, W061)."""
    from django_outbox.registry import registry

    messages: list[CheckMessage] = []
    for event_type, registration in registry.registrations():
        problem = registration.mismatch()
        if problem is None:
            continue
        fix = "drop batch=True" if registration.batch else "add batch=True to @handler(...)"
        messages.append(
            Warning(
                f"the handler of {event_type!r} ({registration.name}): {problem}.",
                hint=f"Fix the annotation, or {fix} (see docs/consumer.rst, 'Batch handlers').",
                obj=registration.name,
                id="django_outbox.W060" if registration.batch else "django_outbox.W061",
            )
        )
    return messages
