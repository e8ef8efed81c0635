"""Handlers, found by event type alone.

One handler per event type: the outbox row records one outcome (``consumed`` or a
retry), so two handlers for one type could not both be tracked. To fan out, call
several functions from one handler, or run a second consumer group
(``outbox_consume --group``): a group other than ``OUTBOX_CONSUMER_GROUP`` runs its
handlers once through its inbox (``django_outbox_inbox``) and never changes the
outbox rows, whose status stays the business of ``OUTBOX_CONSUMER_GROUP``.

A handler takes one ``Event``; a *batch* handler (``batch=True``) takes a list of
them: the events of its type in one chunk of records, handled in one transaction
(see docs/consumer.rst, "Batch handlers").

A *rerun-safe* handler (``rerun_safe=True``) declares that running it again on the
same event does no harm beyond its database writes, which are rolled back: it sends
no e-mail, calls no API, or does so idempotently. The consumer then takes no
savepoint of its own for it; when it or another rerun-safe handler next to it in a
chunk fails, those handlers' writes are rolled back together and they run again
(docs/consumer.rst, "Rerun-safe handlers"). The default is ``False``: each handler
once per delivery unless the process dies.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from django_outbox.exceptions import HandlerAlreadyRegistered, UnknownEventType

if TYPE_CHECKING:
    from django_outbox.envelope import Event

Handler = Callable[["Event"], Any]
BatchHandler = Callable[[list["Event"]], Any]
H = TypeVar("H", bound=Callable[..., Any])


def _qualified_name(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _kind(batch: bool) -> str:
    return "a batch handler" if batch else "a per-event handler"


@dataclass(frozen=True)
class Registration:
    """The handler of one event type, whether it takes a list of events, and whether
    it may run again when a neighbour in its chunk fails (``rerun_safe``)."""

    func: Callable[..., Any]
    batch: bool = False
    rerun_safe: bool = False

    @property
    def name(self) -> str:
        return _qualified_name(self.func)

    def mismatch(self) -> str | None:
        """What the annotation of the handler's argument says against its kind, if anything.

        ``events: list[Event]`` on a per-event handler, ``event: Event`` on a batch one:
        most likely a forgotten (or stray) ``batch=True``.
        """
        try:
            parameter = next(iter(inspect.signature(self.func).parameters.values()))
        except (StopIteration, TypeError, ValueError):
            return None
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            return None
        spelled = (
            annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        )
        spelled = spelled.replace(" ", "")
        many = re.fullmatch(
            r"(?:\w+\.)*(?:list|List|Sequence|Iterable|tuple)\[.*Event.*\]", spelled
        )
        one = re.fullmatch(r"(?:\w+\.)*Event", spelled)
        if self.batch and one:
            return f"its argument is annotated {spelled} but, as a batch handler, it gets a list"
        if not self.batch and many:
            return f"its argument is annotated {spelled} but it gets one event (no batch=True)"
        return None


def _check_flags(batch: object, rerun_safe: object) -> None:
    for name, value in (("batch", batch), ("rerun_safe", rerun_safe)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {value!r}")


def _check_callable(event_type: str, func: Any, batch: bool) -> None:
    """A clear error now for a handler the consumer could not call later."""
    takes = "a list of events" if batch else "one event"
    if not callable(func):
        raise TypeError(f"the handler of {event_type!r} must be callable, not {func!r}")
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"the handler of {event_type!r} ({_qualified_name(func)}) is async; the consumer "
            "calls handlers synchronously, in the transaction of their chunk: make it a plain "
            "function (async_to_sync inside it if need be)"
        )
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    try:
        signature.bind(object())
    except TypeError:
        raise TypeError(
            f"the handler of {event_type!r} ({_qualified_name(func)}) must accept one "
            f"positional argument, {takes}; its signature is {signature}"
        ) from None


class HandlerRegistry:
    def __init__(self) -> None:
        # The name ``_registry`` lets ``autodiscover_modules(register_to=...)`` roll
        # back the registrations of a module whose import failed.
        self._registry: dict[str, Registration] = {}

    def register(
        self,
        event_type: str,
        func: Callable[..., Any],
        *,
        batch: bool = False,
        rerun_safe: bool = False,
    ) -> None:
        """Make ``func`` the handler of ``event_type``; ``batch``: it takes a list of
        events; ``rerun_safe``: it may run again when a neighbour fails (no savepoint)."""
        _check_flags(batch, rerun_safe)
        _check_callable(event_type, func, batch)
        new = Registration(func, batch, rerun_safe)
        existing = self._registry.get(event_type)
        # Re-importing the same module (autoreload, a test) registers the same function again.
        if existing is not None and existing.name != new.name:
            raise HandlerAlreadyRegistered(
                f"event type {event_type!r} already has {_kind(existing.batch)}, "
                f"{existing.name}; cannot also register {_kind(batch)}, {new.name}. One "
                "handler per event type: call both from one handler (a batch handler can "
                "loop over its events), or unregister the first one."
            )
        self._registry[event_type] = new

    def unregister(self, event_type: str) -> None:
        self._registry.pop(event_type, None)

    def registration(self, event_type: str) -> Registration:
        """The handler of ``event_type`` and its kind; ``UnknownEventType`` if none."""
        try:
            return self._registry[event_type]
        except KeyError:
            raise UnknownEventType(f"no handler is registered for {event_type!r}") from None

    def get(self, event_type: str) -> Callable[..., Any]:
        """The handler function of ``event_type``; ``UnknownEventType`` if none."""
        return self.registration(event_type).func

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._registry

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._registry))

    def __len__(self) -> int:
        return len(self._registry)

    def event_types(self) -> list[str]:
        return sorted(self._registry)

    def registrations(self) -> list[tuple[str, Registration]]:
        """``(event type, registration)`` pairs, by event type."""
        return sorted(self._registry.items(), key=lambda item: item[0])


registry = HandlerRegistry()


def handler(
    event_type: str,
    *,
    batch: bool = False,
    rerun_safe: bool = False,
    registry: HandlerRegistry = registry,
) -> Callable[[H], H]:
    """Register the decorated function as the handler of ``event_type``::

    @handler("chat.message.created")
    def save_history(event):
        ...

    @handler("chat.message.created", batch=True)
    def save_histories(events):  # the events of one chunk, in one transaction
        ChatHistory.objects.bulk_create([...])

    @handler("chat.message.created", rerun_safe=True)
    def count_message(event):  # database writes only: it may run again after a
        ...                    # neighbour's failure, its writes rolled back
    """
    if not isinstance(event_type, str) or not event_type or len(event_type) > 64:
        raise ValueError("event_type must be a non-empty string of at most 64 characters")
    _check_flags(batch, rerun_safe)

    def decorator(func: H) -> H:
        registry.register(event_type, func, batch=batch, rerun_safe=rerun_safe)
        return func

    return decorator
