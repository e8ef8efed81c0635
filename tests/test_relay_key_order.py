"""A key's rows reach Kafka in id order even when one of them fails while later rows of
its key are already claimed or with Kafka (relay/keyorder.py).

kafka-python goes on with the batches queued behind a failed produce batch, and the
relay pipelines (a batch is sent before the previous one is settled, another is
claimed ahead): without the key rules a later row of the key is written while the
failed one is sent again. Here records of one key are made to fail (no
acknowledgement: their fate unknown) on the real broker, the topic is read back, and
the first copy of every row must come in key order.
"""

from __future__ import annotations

import datetime
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_outbox import kafka
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.claiming import Claim, ClaimedRow
from django_outbox.relay import keyorder
from django_outbox.relay.loop import Relay
from django_outbox.relay.send import RecordError, Settled
from tests.kafka_fixtures import order_inversions, read_topic

from .relay_support import IGNORE_LEAKED_SOCKETS, make_rows, wait_for

LEASE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def row(pk: int, key: str, topic: str = "t") -> ClaimedRow:
    return ClaimedRow(pk, "e", topic, key, "{}", 0, 20, None)


# ------------------------------------------------------------------ the rules, pure

rows_strategy = st.lists(
    st.tuples(st.sampled_from(["t", "u"]), st.sampled_from(["", "a", "b", "c", "d"])),
    max_size=30,
)


@given(rows=rows_strategy, busy=st.sets(st.sampled_from(["a", "b", "c", "d", ""])))
def test_a_split_keeps_every_row_once_in_claim_order(rows, busy):
    claim = Claim("db", LEASE, [row(i, key, topic) for i, (topic, key) in enumerate(rows)])
    keys = {("db", "t", key) for key in busy}
    free, held = keyorder.split(claim, keys)
    assert sorted(free.rows + held.rows) == claim.rows
    assert free.rows == [r for r in claim.rows if keyorder.key_of("db", r) not in keys]
    assert all(keyorder.key_of("db", r) in keys for r in held.rows)
    assert all(r.message_key for r in held.rows)  # a row without a key is never held
    assert free.token == held.token == claim.token and free.lease == held.lease == LEASE


def test_failed_keys_are_the_keys_of_rows_that_will_be_sent_again():
    claim = Claim("db", LEASE, [row(1, "a"), row(2, "b"), row(3, ""), row(4, "c"), row(5, "a")])
    outcomes = [
        None,
        kafka.NotAcknowledged("no answer"),  # fate unknown: sent again
        kafka.NotAcknowledged("no answer"),  # no key: nothing to hold
        RecordError("cannot build"),  # dead for good: later rows may go
        None,
    ]
    assert keyorder.failed_keys(Settled(claim, outcomes)) == {("db", "t", "b")}


def test_a_later_row_acknowledged_after_an_earlier_failed_one_is_named():
    claim = Claim("db", LEASE, [row(1, "a"), row(2, "b"), row(3, "a"), row(4, "b"), row(5, "a")])
    lost = kafka.NotAcknowledged("no answer")
    assert keyorder.overtaken(Settled(claim, [lost, None, None, None, None])) == [(1, 3)]
    assert keyorder.overtaken(Settled(claim, [None, lost, None, lost, None])) == []
    dead = RecordError("cannot build")  # a dead row holds nothing
    assert keyorder.overtaken(Settled(claim, [dead, None, None, None, None])) == []


# ------------------------------------------------------------------ on the real broker


def failing_once(victims: set[int], *, whole_key: bool = True):
    """A ``kafka.send_batch`` that does not send the records of ``victims`` the first
    time it meets them, nor the later records of their key in that send (as when a
    produce batch of their partition fails): their outcome is ``NotAcknowledged``, as
    after a timeout."""
    real = kafka.send_batch
    failed: set[int] = set()
    sends: list[list[int]] = []

    def send_batch(producer, records, timeout):
        ids = [int(dict(r.headers)["outbox_id"]) for r in records]
        sends.append(ids)
        drop, broken = [], set()
        for i, (pk, record) in enumerate(zip(ids, records, strict=True)):
            if (pk in victims and pk not in failed) or (whole_key and record.key in broken):
                drop.append(i)
                broken.add(record.key)
        failed.update(ids[i] for i in drop)
        kept = [r for i, r in enumerate(records) if i not in drop]
        inner = real(producer, kept, timeout)
        sending = kafka.Sending(len(records), inner.deadline, inner.timeout)
        where = [i for i in range(len(records)) if i not in drop]
        for inner_index, outcome in enumerate(inner.outcomes):
            sending.outcomes[where[inner_index]] = outcome
        sending.futures.extend((where[i], future) for i, future in inner.futures)
        for i in drop:
            sending.outcomes[i] = kafka.NotAcknowledged("dropped by the test: no answer")
        return sending

    return send_batch, sends, failed


def relay_until_published(count: int, batch_size: int) -> None:
    """Run a relay in a thread until ``count`` rows are published, then stop it."""
    relay = Relay(batch_size=batch_size, interval=0.05, lease_seconds=10)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: OutboxMessage.objects.filter(status=Status.PUBLISHED).count() == count,
            60,
            "every row published",
        )
    finally:
        relay.stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_failed_row_is_not_overtaken_by_later_rows_of_its_key(
    relay_settings, kafka_bootstrap, kafka_topic, monkeypatch
):
    """On kafka-python (the failure is planted in its futures); the rules are the
    relay's own, the same on either client."""
    relay_settings.OUTBOX_WAKE_RELAY = False
    # one hot key among others, in batches of 4: the key's rows are in every batch
    keys = [k for i in range(30) for k in ("hot", f"other-{i}")]
    made = make_rows(len(keys), kafka_topic, keys=keys)
    hot = [m.pk for m in made if m.message_key == "hot"]
    victims = {hot[3], hot[10], hot[11]}  # one alone, two in a row
    send_batch, sends, failed = failing_once(victims)
    monkeypatch.setattr(kafka, "send_batch", send_batch)
    relay_until_published(len(made), batch_size=4)
    records = read_topic(kafka_bootstrap, kafka_topic, len(made))
    first_copies = {int(dict(r.headers)["outbox_id"]) for r in records}
    assert first_copies == {m.pk for m in made}
    assert order_inversions(records) == 0
    # the victims were really dropped (else this test proves nothing), and sent again
    assert victims <= failed
    assert all(sum(pk in ids for ids in sends) >= 2 for pk in victims)
    # a row of unknown fate spends no attempt
    assert OutboxMessage.objects.filter(pk__in=victims, retry_count=0).count() == len(victims)


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_an_order_broken_inside_one_batch_is_said(
    relay_settings, kafka_bootstrap, kafka_topic, monkeypatch, caplog
):
    """Only the first row of a key's two in one batch fails (as when the first of two
    produce requests of one partition fails): Kafka holds them out of order, and the
    relay says so rather than keep quiet."""
    relay_settings.OUTBOX_WAKE_RELAY = False
    made = make_rows(4, kafka_topic, keys=["k"])
    victim = made[0].pk
    send_batch, _sends, failed = failing_once({victim}, whole_key=False)
    monkeypatch.setattr(kafka, "send_batch", send_batch)
    relay_until_published(len(made), batch_size=10)
    assert failed == {victim}
    assert order_inversions(read_topic(kafka_bootstrap, kafka_topic, len(made))) == 1
    said = [r.getMessage() for r in caplog.records if "out of order in Kafka" in r.getMessage()]
    assert said and f"#{made[1].pk} before #{victim}" in said[0]
