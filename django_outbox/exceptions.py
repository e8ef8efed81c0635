"""The package's exception hierarchy: catch ``OutboxError`` to catch them all."""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every error raised by django_outbox."""


class ImproperlyConfiguredOutbox(OutboxError):
    """A setting is missing or wrong (for example no topic for an event type)."""


class InvalidEvent(OutboxError, ValueError):
    """``publish_event()`` was given something it cannot store; nothing was written."""


class MalformedEvent(OutboxError, ValueError):
    """Bytes or text that are not a valid event envelope."""


class HandlerAlreadyRegistered(OutboxError):
    """A second handler was registered for an event type that already has one."""


class UnknownEventType(OutboxError, LookupError):
    """No handler is registered for an event type."""


def describe(exc: BaseException) -> str:
    """An error as stored in ``last_error``: its type and message."""
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name
