"""The ordering detector: counts events of a key handled after a later event of that key.

The relay sends the rows of a key in id order while nothing fails; a retried row
goes after the rows of its key written later (unless ``OUTBOX_STRICT_ORDER``). This
detector turns that caveat into a number: per partition it remembers the highest
outbox id handled for each key (the ``outbox_db`` / ``outbox_id`` headers; records
without them are not looked at), and a record whose id is lower than one already
handled for its key is a *violation*: logged at WARNING with topic, partition, key
and both ids, counted in ``ConsumerStats.ordering_violations`` and, with metrics on,
in ``django_outbox_ordering_violations_total``.

- Only records whose handler ran now count (``Outcome.HANDLED``): a duplicate was
  handled before, in its place.
- The same id again is not a violation; nor is a record read again at an offset
  this process has passed already (a rewind, a rebalance).
- Memory is bounded: at most ``OUTBOX_ORDERING_KEYS`` keys per partition, the least
  recently seen forgotten first (a forgotten key cannot be caught out of order); 0
  turns the detector off.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from django_outbox.consumer.handling import Outcome
from django_outbox.consumer.records import Delivery, local_reference
from django_outbox.ops import metrics

logger = logging.getLogger("django_outbox.consumer")


class _Partition:
    __slots__ = ("offset", "keys")

    def __init__(self) -> None:
        #: The highest offset looked at: a record at or below it is read again.
        self.offset = -1
        #: (outbox database, key) -> highest outbox id handled, least recently seen first.
        self.keys: OrderedDict[tuple[str, bytes], int] = OrderedDict()


class OrderingDetector:
    """Remembers, per partition, the last outbox id handled per key (``keys`` at most)."""

    def __init__(self, keys: int) -> None:
        self.keys = max(keys, 0)
        self.violations = 0
        self._partitions: dict[tuple[str, int], _Partition] = {}

    def check(self, delivery: Delivery, outcome: Outcome = Outcome.HANDLED) -> bool:
        """Note a record's outcome; True when it was handled out of its key's order."""
        if not self.keys or outcome is not Outcome.HANDLED or delivery.key is None:
            return False
        reference = local_reference(delivery)
        if reference is None:
            return False
        where = (delivery.topic, delivery.partition)
        partition = self._partitions.get(where)
        if partition is None:
            partition = self._partitions[where] = _Partition()
        if delivery.offset <= partition.offset:
            return False
        partition.offset = delivery.offset
        alias, outbox_id = reference
        key = (alias, delivery.key)
        seen = partition.keys.get(key)
        if seen is None:
            partition.keys[key] = outbox_id
            if len(partition.keys) > self.keys:
                partition.keys.popitem(last=False)
            return False
        partition.keys.move_to_end(key)
        if outbox_id >= seen:
            partition.keys[key] = outbox_id
            return False
        self.violations += 1
        logger.warning(
            "outbox consumer: ordering violation on %s[%d]: key %r, outbox id %d (%s) "
            "handled after id %d",
            delivery.topic,
            delivery.partition,
            delivery.key,
            outbox_id,
            alias,
            seen,
            extra={
                "topic": delivery.topic,
                "partition": delivery.partition,
                "offset": delivery.offset,
                "key": delivery.key,
                "outbox_id": outbox_id,
                "later_outbox_id": seen,
            },
        )
        metrics.ordering_violation(delivery.topic)
        return True

    def remembered(self) -> int:
        """How many keys are remembered, over all partitions."""
        return sum(len(partition.keys) for partition in self._partitions.values())
