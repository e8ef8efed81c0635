"""django-outbox: a transactional outbox for Django, delivered through Apache Kafka.

Public API::

    from django_outbox import publish_event, handler, Event
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Event", "handler", "publish_event", "registry"]

if TYPE_CHECKING:
    from django_outbox.envelope import Event
    from django_outbox.publish.write import publish_event
    from django_outbox.registry import handler, registry


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package never imports models before apps are ready.
    if name == "publish_event":
        from django_outbox.publish.write import publish_event

        return publish_event
    if name == "Event":
        from django_outbox.envelope import Event

        return Event
    if name in {"handler", "registry"}:
        from django_outbox import registry as registry_module

        return getattr(registry_module, name)
    raise AttributeError(f"module 'django_outbox' has no attribute {name!r}")
