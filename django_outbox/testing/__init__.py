"""Testing a project that uses django-outbox, without sleeps (docs/testing.rst).

- ``capture_events()`` / the ``outbox_events`` pytest fixture: the events a block
  published, once committed; ``assert_published()`` with a readable miss;
- ``run_handlers()``: the registered handlers of events, through the consumer's own
  code, with no Kafka;
- ``drain()``: relay and consumer in-process against a real broker, until settled.

Import it from tests only: it pulls in the relay and the consumer. The names load
lazily, so that pytest can load ``plugin`` before Django is set up.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_outbox.testing.capture import (
        Capture,
        CapturedEvent,
        assert_not_published,
        assert_published,
        capture_events,
    )
    from django_outbox.testing.draining import Drained, OutboxStuck, RowState, drain
    from django_outbox.testing.handlers import Handled, HandlerFailed, run_handlers

_WHERE = {
    "Capture": "capture",
    "CapturedEvent": "capture",
    "assert_not_published": "capture",
    "assert_published": "capture",
    "capture_events": "capture",
    "Drained": "draining",
    "OutboxStuck": "draining",
    "RowState": "draining",
    "drain": "draining",
    "Handled": "handlers",
    "HandlerFailed": "handlers",
    "run_handlers": "handlers",
}
__all__ = [
    "Capture",
    "CapturedEvent",
    "Drained",
    "Handled",
    "HandlerFailed",
    "OutboxStuck",
    "RowState",
    "assert_not_published",
    "assert_published",
    "capture_events",
    "drain",
    "run_handlers",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'django_outbox.testing' has no attribute {name!r}")
    return getattr(import_module(f"django_outbox.testing.{_WHERE[name]}"), name)
