"""The relay: pending outbox rows -> Kafka -> ``published`` (``manage.py outbox_relay``).

One module per step of a batch's trip:

- ``loop``: the ``Relay`` behind the command: claim, send, write back, in a pipeline;
- ``buckets``: the relay's share of the key space when several relays share a database;
- ``send``: claimed rows -> Kafka records -> one outcome per row (the delivery core);
- ``write_back``: the outcomes recorded on the rows, fenced per claim;
- ``dbthread``: the thread the claims and write-backs run on, off the Kafka path.

The claim itself and every state change of a row are transitions of
``django_outbox.models``. Imports models, kafka, ops and the core modules; never the
consumer or the admin.
"""

from __future__ import annotations

from django_outbox.relay.loop import Relay

__all__ = ["Relay"]
