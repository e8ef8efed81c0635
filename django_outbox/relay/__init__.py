"""The relay: pending outbox rows -> Kafka -> ``published`` (``manage.py outbox_relay``).

One module per step of a batch's trip:

- ``loop``: the ``Relay`` behind the command: its loop, its start and its stop;
- ``rounds``: one round: claim, send, settle the batch before, in a pipeline;
- ``claims``: the next batch of each database, claimed now or ahead, given back unsent;
- ``send``: claimed rows -> Kafka records -> one outcome per row (the delivery core);
- ``write_back``: the outcomes recorded on the rows, fenced per claim;
- ``outages``: a database or Kafka away, and the pause before asking again;
- ``coordination``: the relay's buckets on each of its databases, over ``buckets``:
  the share of the key space of one relay when several relays share a database;
- ``progress``: the progress line, the backlog;
- ``dbthread``: the thread the claims and write-backs run on, off the Kafka path.

The claim itself and every state change of a row are transitions of
``django_outbox.models``. Imports models, kafka, ops and the core modules; never the
consumer or the admin.
"""

from __future__ import annotations

from django_outbox.relay.loop import Relay

__all__ = ["Relay"]
