"""Publishing: ``publish_event()`` writes an event to the outbox in the caller's
transaction and wakes the relay once it commits (``write``).

On the request's hot path: imports models, the envelope, topics, tracing and the
wake-up channel; never a worker, Kafka or the admin.
"""

from __future__ import annotations

from django_outbox.publish.write import publish_event

__all__ = ["publish_event"]
