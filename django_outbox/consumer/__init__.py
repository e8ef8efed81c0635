"""The consumer: Kafka records to handlers, once each. One module per job:

- ``records``: a Kafka record as a ``Delivery``, and its event (parsing never raises);
- ``local``: once-only on the outbox rows of this process's databases;
- ``inbox``: once-only for events from elsewhere (the inbox table);
- ``rejects``: keeping what cannot be handled as a ``RejectedRecord``;
- ``handling``: the once-only rules applied to a chunk of records (``chunk``: which
  handler, in which order); ``running``: the one call of a user's handler;
- ``broker``: whether the broker answers (outages, a client to replace);
- ``loop``: the ``Consumer`` behind ``manage.py outbox_consume``: its loop, start, stop;
- ``polling``: its Kafka client and the polls; ``consuming``: a poll's records, chunk
  by chunk, and what follows each outcome; ``retrying``: the database away, an inbox
  event retried in place; ``commits``: offsets; ``lifecycle``: the heartbeat, a broker
  that refuses; ``progress``: the progress line; ``stats``: ``ConsumerStats``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_outbox.consumer.handling import Handling
    from django_outbox.consumer.loop import (
        DEFAULT_BATCH_SIZE,
        Consumer,
        ConsumerStats,
        subscribed_topics,
    )
    from django_outbox.consumer.outcomes import Outcome, Result
    from django_outbox.consumer.records import Delivery

#: Where each public name lives. Imported on first use: the admin and the journey page
#: import ``consumer.inbox``, and a web process should not pay for the Kafka client that
#: ``loop`` brings (about 0.13 s of ``django.setup()``).
_PUBLIC = {
    "DEFAULT_BATCH_SIZE": "loop",
    "Consumer": "loop",
    "ConsumerStats": "loop",
    "subscribed_topics": "loop",
    "Handling": "handling",
    "Outcome": "outcomes",
    "Result": "outcomes",
    "Delivery": "records",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Consumer",
    "ConsumerStats",
    "Delivery",
    "Handling",
    "Outcome",
    "Result",
    "subscribed_topics",
]
