"""Key order across the batches a relay has with Kafka at once, through failures.

Kafka keeps a partition's order within one producer only while nothing fails. When a
produce batch fails (its retries or its delivery timeout spent, or the idempotent
producer bumps its epoch, KIP-360), kafka-python goes on with the batches queued
behind it: a later row of a key can be written while an earlier one is sent again.
The relay pipelines (a batch is sent before the one before it is settled, another is
claimed ahead), so three rules keep each key's rows in id order:

- *one batch of a key with Kafka at a time*: rows of a batch whose key is in a batch
  still unsettled are held back (``split``) and sent right after that batch settles;
- *a failed key gives its later rows back*: once a settle shows a row of a key not
  acknowledged, the later rows of that key already claimed (held back, or claimed
  ahead before the failure was written back) are given back unsent, due at once, no
  attempt spent (``Rounds``); the next claim, which the database thread runs after
  the write-back, starts again from the key's lowest due row;
- *a row of unknown fate is due again at once* (``write_back``), so no later row of
  its key is due before it.

A key is (database, topic, message key); rows without a key have no order to keep
(Kafka's partitioner spreads them). A row that fails with a definite error backs off
(``OUTBOX_STRICT_ORDER`` keeps the order through those too: docs/relay.rst).

What the rules cannot undo is said (``overtaken``): within one batch, a later row of
a key acknowledged while an earlier one was not (two produce requests of one
partition, the first failed) is already out of order in Kafka.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from django_outbox.models.claiming import Claim, ClaimedRow
from django_outbox.relay.send import InFlight, Settled, is_final

#: (database alias, topic, message key)
Key = tuple[str, str, str]


def key_of(alias: str, row: ClaimedRow) -> Key | None:
    return (alias, row.topic, row.message_key) if row.message_key else None


def keys_in(batches: Iterable[InFlight]) -> set[Key]:
    """The keys of the rows of ``batches`` (sent, not settled)."""
    keys: set[Key] = set()
    for in_flight in batches:
        claim = in_flight.claim
        keys.update(k for row in claim.rows if (k := key_of(claim.alias, row)) is not None)
    return keys


def split(claim: Claim, keys: set[Key]) -> tuple[Claim, Claim]:
    """``claim`` as (rows of other keys, rows of ``keys``), each in claim order.

    Both parts keep the claim's lease and token: each is written back on its own,
    fenced alike.
    """
    if not keys or not claim.rows:
        return claim, dataclasses.replace(claim, rows=[])
    free: list[ClaimedRow] = []
    held: list[ClaimedRow] = []
    for row in claim.rows:
        (held if key_of(claim.alias, row) in keys else free).append(row)
    if not held:
        return claim, dataclasses.replace(claim, rows=[])
    return dataclasses.replace(claim, rows=free), dataclasses.replace(claim, rows=held)


def failed_keys(settled: Settled) -> set[Key]:
    """Keys with a row that Kafka did not acknowledge and that will be sent again."""
    claim = settled.claim
    return {
        k
        for row, outcome in zip(claim.rows, settled.outcomes, strict=True)
        if outcome is not None
        and not is_final(outcome)
        and (k := key_of(claim.alias, row)) is not None
    }


def overtaken(settled: Settled) -> list[tuple[int, int]]:
    """Per key, (an id not acknowledged, a later id of its key that was): order broken."""
    claim = settled.claim
    failed: dict[Key, int] = {}
    broken: dict[Key, tuple[int, int]] = {}
    for row, outcome in zip(claim.rows, settled.outcomes, strict=True):
        key = key_of(claim.alias, row)
        if key is None or key in broken:
            continue
        if outcome is not None and not is_final(outcome):
            failed.setdefault(key, row.id)
        elif outcome is None and key in failed:
            broken[key] = (failed[key], row.id)
    return list(broken.values())
