"""The database floor: the relay's and the consumer's database work alone, no Kafka.

Each runs the very code its worker runs, minus the broker, so that a relay or
consumer figure can be read against what the database allows:

- ``relay_floor``: ``claiming.claim`` of a batch, then ``write_back`` of it as if
  Kafka had acknowledged every row (the fenced ``published`` transition, its
  signal and metrics), one batch after another until nothing is due. The relay
  does the same work on its database thread, overlapped with Kafka; here it is
  serial, so the relay can come near this rate, not above it by much.
- ``consumer_floor``: ``Handling.handle_batch`` with a handler that does nothing,
  on deliveries read from Kafka beforehand: parse, lock the local rows, mark them
  ``consumed`` (the inbox for events without a local row), one transaction per
  chunk, as the consumer does between two polls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def relay_floor(alias: str, batch_size: int, lease_seconds: float) -> tuple[int, float]:
    """Claim and write back every due row of ``alias``; ``(rows, seconds)``.

    With relay buckets on (the default), the claims keep to the buckets of a relay
    alone on its database, as the relay's do: the same statements, the same checks.
    """
    from django.utils import timezone

    from django_outbox.conf import outbox_settings
    from django_outbox.models.claiming import claim
    from django_outbox.relay import buckets
    from django_outbox.relay.send import Settled
    from django_outbox.relay.write_back import write_back

    coordinator = buckets.Coordinator(alias, buckets.new_name(), lease_seconds)
    sharing = outbox_settings.relay_buckets and coordinator.enabled
    due_by = timezone.now()  # as a burst: what is due when it starts
    done = 0
    tick_at = 0.0
    started = time.perf_counter()
    try:
        while True:
            if sharing and time.perf_counter() >= tick_at:  # as often as the relay ticks
                coordinator.tick(greedy=True)
                tick_at = time.perf_counter() + buckets.TICK
            owner = coordinator.owner() if sharing else None
            batch = claim(alias, batch_size, lease_seconds, due_by=due_by, owner=owner)
            if not batch.rows:
                break
            write_back(Settled(batch, [None] * len(batch.rows)))
            done += len(batch.rows)
        return done, time.perf_counter() - started
    finally:
        if sharing:
            coordinator.leave()


def consumer_floor(handling: Any, deliveries: Sequence[Any], batch_size: int) -> tuple[int, float]:
    """Handle ``deliveries`` in chunks of ``batch_size``; ``(handled, seconds)``."""
    from django_outbox.consumer import Outcome

    handled = 0
    started = time.perf_counter()
    for first in range(0, len(deliveries), batch_size):
        results = handling.handle_batch(deliveries[first : first + batch_size])
        handled += sum(1 for r in results if r is not None and r.outcome is Outcome.HANDLED)
    return handled, time.perf_counter() - started
