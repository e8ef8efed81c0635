"""Handlers, found by event type alone.

One handler per event type: the outbox row records one outcome (``consumed`` or a
retry), so two handlers for one type could not both be tracked. To fan out, call
several functions from one handler, or run a second consumer group
(``outbox_consume --group``): a group other than ``OUTBOX_CONSUMER_GROUP`` runs its
handlers once through its inbox (``django_outbox_inbox``) and never changes the
outbox rows, whose status stays the business of ``OUTBOX_CONSUMER_GROUP``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import HandlerAlreadyRegistered, UnknownEventType

if TYPE_CHECKING:
    from .envelope import Event

Handler = Callable[["Event"], Any]
H = TypeVar("H", bound=Handler)


def _qualified_name(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


class HandlerRegistry:
    def __init__(self) -> None:
        # The name ``_registry`` lets ``autodiscover_modules(register_to=...)`` roll
        # back the registrations of a module whose import failed.
        self._registry: dict[str, Handler] = {}

    def register(self, event_type: str, func: Handler) -> None:
        existing = self._registry.get(event_type)
        # Re-importing the same module (autoreload, a test) registers the same function again.
        if existing is not None and _qualified_name(existing) != _qualified_name(func):
            raise HandlerAlreadyRegistered(
                f"event type {event_type!r} already has the handler {_qualified_name(existing)}; "
                f"cannot also register {_qualified_name(func)}. Call both from one handler, "
                "or unregister the first one."
            )
        self._registry[event_type] = func

    def unregister(self, event_type: str) -> None:
        self._registry.pop(event_type, None)

    def get(self, event_type: str) -> Handler:
        try:
            return self._registry[event_type]
        except KeyError:
            raise UnknownEventType(f"no handler is registered for {event_type!r}") from None

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._registry

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._registry))

    def __len__(self) -> int:
        return len(self._registry)

    def event_types(self) -> list[str]:
        return sorted(self._registry)


registry = HandlerRegistry()


def handler(event_type: str, *, registry: HandlerRegistry = registry) -> Callable[[H], H]:
    """Register the decorated function as the handler of ``event_type``::

    @handler("chat.message.created")
    def save_history(event):
        ...
    """
    if not isinstance(event_type, str) or not event_type or len(event_type) > 64:
        raise ValueError("event_type must be a non-empty string of at most 64 characters")

    def decorator(func: H) -> H:
        registry.register(event_type, func)
        return func

    return decorator
