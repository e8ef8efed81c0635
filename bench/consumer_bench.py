"""Consumer throughput and commit-to-handled latency, next to the raw kafka-python consumer.

Usage (a database of its own, migrated by the script; the broker of scripts/kafka-local)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 \\
    DATABASE_URL=postgres://outbox:outbox@127.0.0.1:5432/outbox_consumer_bench \\
        python bench/consumer_bench.py [--events 5000] [--latency-events 300] [--batch-size N]

What it prints:

1. **throughput**: ``--events`` chat messages are published (``post_message``: business
   row + outbox row in one transaction), delivered by ``outbox_relay --burst``, then
   ``Consumer(burst=True)`` handles them; four times, on fresh rows: the chat handler
   (one ``ChatHistory`` ``get_or_create``) and a no-op handler (the consumer's own
   cost), each at ``batch_size=1`` and at ``--batch-size`` (default: the consumer's).
   Figures: events/s over the run (group join included) and from the first record.
2. **raw**: a bare kafka-python consumer (``assign`` + ``poll``, no group, no database)
   reads the same records: records/s, and the ratio consumer / raw.
3. **latency**: with a consumer running, ``--latency-events`` messages are published at
   ``--rate`` per second; latency is from the publishing transaction's commit to the
   commit of the handler's transaction (p50, p99, max), once with the fast path on
   (delivered from ``on_commit``) and once with it off (a relay polling every
   ``--relay-interval`` s delivers them).

Everything runs in this one process (threads for the consumer and the relay), so
the figures include Python's GIL contention: a deployment runs them apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
os.environ.setdefault("DJANGO_DEBUG", "False")  # DEBUG keeps every query in memory


def stamp(times: dict[str, float], key: str):  # type: ignore[no-untyped-def]
    """A callback that records when it ran, under ``key``."""
    return lambda: times.__setitem__(key, time.perf_counter())


def ensure_database(connection) -> None:  # type: ignore[no-untyped-def]
    """Create the benchmark's database on PostgreSQL/MariaDB when it does not exist."""
    if connection.vendor == "sqlite":
        return
    name = connection.settings_dict["NAME"]
    with connection._nodb_cursor() as cursor:
        quoted = connection.ops.quote_name(name)
        try:
            cursor.execute(f"CREATE DATABASE {quoted}")
        except Exception as exc:  # already there
            if "exist" not in str(exc):
                raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s in the latency run")
    parser.add_argument("--relay-interval", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, help="default: the consumer's")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.test.utils import override_settings

    from django_outbox import kafka
    from django_outbox.consumer import DEFAULT_BATCH_SIZE, Consumer
    from django_outbox.registry import registry
    from django_outbox.relay import Relay
    from testproject.chat.events import persist_chat_history
    from testproject.chat.models import ChatHistory, Conversation
    from testproject.chat.services import MESSAGE_CREATED, post_message

    ensure_database(connection)
    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    call_command("migrate", verbosity=0)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    topics: list[str] = []

    def new_topic() -> str:
        topic = f"bench-consumer-{uuid.uuid4().hex[:8]}"
        with kafka.build_admin() as admin:
            admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}})
            admin.wait_for_topics([topic], timeout_ms=30000)
        topics.append(topic)
        return topic

    topic = new_topic()
    fast_group = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 50}
    print(
        f"database {connection.vendor} ({settings.DATABASES['default']['NAME']}), "
        f"broker {bootstrap}, topic {topic} (3 partitions)"
    )

    # The chat handler, plus the moment its transaction committed.
    done: dict[str, float] = {}

    def timed_handler(event):  # type: ignore[no-untyped-def]
        persist_chat_history(event)
        transaction.on_commit(stamp(done, str(event.event_id)))

    registry.unregister(MESSAGE_CREATED)
    registry.register(MESSAGE_CREATED, timed_handler)

    base = dict(
        OUTBOX_KAFKA_BOOTSTRAP_SERVERS=[bootstrap],
        OUTBOX_TOPICS={MESSAGE_CREATED: topic},
        OUTBOX_KAFKA_CONSUMER=fast_group,
    )
    conversation = Conversation.objects.create(title="bench")

    # ---------------------------------------------------------------- throughput
    first_call: list[float] = []

    def noop_handler(event):  # type: ignore[no-untyped-def]
        if not first_call:
            first_call.append(time.perf_counter())

    def measured(event):  # type: ignore[no-untyped-def]
        noop_handler(event)
        persist_chat_history(event)

    runs = [("chat", 1), ("chat", args.batch_size), ("no-op", 1), ("no-op", args.batch_size)]
    rate = 0.0
    for handler_name, batch_size in runs:
        registry.unregister(MESSAGE_CREATED)
        registry.register(MESSAGE_CREATED, measured if handler_name == "chat" else noop_handler)
        first_call.clear()
        topic = new_topic()
        with override_settings(
            **{**base, "OUTBOX_TOPICS": {MESSAGE_CREATED: topic}}, OUTBOX_WAKE_RELAY=False
        ):
            start = time.perf_counter()
            for first in range(0, args.events, 100):
                with transaction.atomic():
                    for n in range(first, min(first + 100, args.events)):
                        post_message(conversation, "bench", f"message {n} " + "x" * 200)
            publish_s = time.perf_counter() - start
            start = time.perf_counter()
            call_command("outbox_relay", "--burst", verbosity=0)
            relay_s = time.perf_counter() - start
            before = ChatHistory.objects.count()
            consumer = Consumer(
                [topic], group=f"bench-{uuid.uuid4().hex[:8]}", burst=True, batch_size=batch_size
            )
            start = time.perf_counter()
            consumer.run()
            end = time.perf_counter()
            handled = ChatHistory.objects.count() - before
        whole = consumer.stats.records / (end - start)
        working = consumer.stats.records / (end - first_call[0])
        if (handler_name, batch_size) == runs[1]:
            rate, publish_rate, relay_rate = working, args.events / publish_s, args.events / relay_s
        print(
            f"consumer, {handler_name} handler, --batch-size {batch_size}: "
            f"{consumer.stats.records} records ({handled} chat rows) in {end - start:.2f} s "
            f"= {whole:.0f}/s with the group join, {working:.0f}/s from the first record "
            f"({consumer.stats.outcomes})"
        )
    print(f"publish: {publish_rate:.0f} events/s; relay --burst: {relay_rate:.0f} rows/s")
    registry.unregister(MESSAGE_CREATED)
    registry.register(MESSAGE_CREATED, timed_handler)

    # ---------------------------------------------------------------- raw kafka-python
    raw = kafka.build_consumer(group_id=None, fetch_max_wait_ms=50)
    partitions = [kafka.TopicPartition(topic, p) for p in range(3)]
    raw.assign(partitions)
    raw.seek_to_beginning(*partitions)
    count, start = 0, time.perf_counter()
    while count < args.events:
        for records in raw.poll(timeout_ms=1000).values():
            count += len(records)
    raw_s = time.perf_counter() - start
    raw.close()
    raw_rate = count / raw_s
    print(f"raw kafka-python consumer: {count} records in {raw_s:.2f} s = {raw_rate:.0f}/s")
    print(
        f"ratio consumer (chat, --batch-size {args.batch_size}) / raw: {rate / raw_rate:.3f} "
        f"({raw_rate / rate:.1f}x slower)"
    )

    # ---------------------------------------------------------------- latency
    for fast_path in (True, False):
        topic = new_topic()  # empty: no backlog in front of the measured events
        options = {**base, "OUTBOX_TOPICS": {MESSAGE_CREATED: topic}}
        with override_settings(**options, OUTBOX_WAKE_RELAY=fast_path):
            consumer = Consumer([topic], group=f"bench-{uuid.uuid4().hex[:8]}", poll_timeout=0.1)
            runner = threading.Thread(target=consumer.run)
            runner.start()
            relay = Relay(interval=args.relay_interval) if not fast_path else None
            relay_thread = threading.Thread(target=relay.run) if relay else None
            if relay_thread:
                relay_thread.start()
            while not (consumer._client and consumer._client.assignment()):
                time.sleep(0.1)  # joined the group
            time.sleep(1)
            committed: dict[str, float] = {}
            for _ in range(args.latency_events):
                with transaction.atomic():
                    # Registered first, so it runs before the fast path's own on_commit
                    # hook (which sends, waits for the ack and writes back).
                    moment: dict[str, float] = {}
                    transaction.on_commit(stamp(moment, "committed"))
                    row = post_message(conversation, "bench", "latency " + "x" * 200)
                committed[str(row.event.event_id)] = moment["committed"]
                time.sleep(1 / args.rate)
            deadline = time.monotonic() + 60
            while not all(e in done for e in committed) and time.monotonic() < deadline:
                time.sleep(0.05)
            consumer.stop()
            if relay:
                relay.stop()
            runner.join()
            if relay_thread:
                relay_thread.join()
        latencies = sorted((done[e] - t) * 1000 for e, t in committed.items() if e in done)
        missing = len(committed) - len(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        label = (
            "fast path on " if fast_path else f"fast path off (relay every {args.relay_interval} s)"
        )
        print(
            f"latency commit -> handled, {label}: {len(latencies)} events at {args.rate:.0f}/s: "
            f"p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, "
            f"max {latencies[-1]:.1f} ms" + (f", {missing} missing" if missing else "")
        )

    with kafka.build_admin() as admin:
        admin.delete_topics(topics)


if __name__ == "__main__":
    main()
