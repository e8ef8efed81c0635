#!/usr/bin/env python
"""Where ``outbox_relay --burst`` and ``outbox_consume --burst`` spend their start-up.

Usage (a warm broker from ``scripts/kafka-local start``; the database of DATABASE_URL,
created if need be and migrated; SQLite file testproject/db.sqlite3 when unset)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgres://... \\
        python bench/startup_bench.py [--events 200] [--repeat 3]

``--events`` chat messages are published once; each repetition sets them back to
``pending`` (bench set-up) and runs each command in a fresh interpreter, as an
operator would start it, the consumer in a new group. The child prints, in seconds
since the parent launched it, when each phase ended:

- both: ``interpreter``, the bench's own first line (Python started, its ``site``
  imported); ``import django``; ``django.setup()`` (settings, apps, handler
  autodiscovery); ``command imported`` (the worker's modules, Kafka client included);
  ``system checks`` (run as ``manage.py`` runs them);
- relay: its buckets ticked (``OUTBOX_RELAY_BUCKETS``), the producer built
  (bootstrap: connection, API versions), the first claim, the first send (the
  topic's metadata, the batch queued), the first ack, the first batch written
  back, the end;
- consumer: the client built, the group coordinator found, JoinGroup and SyncGroup
  answered, partitions assigned, the first poll returned, the first poll that
  returned records (positions fetched, first fetch), the first chunk handled, the
  end.

Each repetition also starts two bare kafka-python clients the same way, a fresh
interpreter each: a consumer in a new group on the same topic (launch to its first
poll that returned records) and an idempotent ``acks=all`` producer (launch to the
ack of its first record, on a topic of its own). They are the baselines below.

Medians over the repetitions are printed; nothing is asserted about speed.
``STARTUP_PROFILE=1`` also prints a cProfile of the consumer's first chunk.

``--json PATH`` writes the figures (bench/results.py), seconds since launch, lower
is better, one value per repetition. Issue 19's goal is absolute (a worker doing
work within 0.5 s of its start, broker warm), so it is each figure's ``limit``, not
a ratio target; the baseline is what the same step costs without the library,
measured in the same run, to read the limit against:

- ``consume --burst: first record handled`` (limit 0.5 s) against the bare
  consumer's first records;
- ``relay --burst: first claim`` (limit 0.5 s) against the same process's
  ``django.setup()`` done, what any Django command pays before its first query;
- ``relay --burst: first write-back`` (no limit) against the bare producer's first
  ack.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
os.environ.setdefault("DJANGO_DEBUG", "False")


#: The commands one repetition launches, each in a fresh interpreter.
CHILDREN = ("relay", "consume", "raw-consume", "raw-produce")
#: Issue 19: a worker does work within this many seconds of its start, broker warm.
LIMIT_SECONDS = 0.5
#: (figure, its child and mark; the baseline, its child and mark; the limit).
FIGURES = (
    (
        "consume --burst: first record handled",
        ("consume", "first chunk handled"),
        "bare kafka-python consumer, new group: first records",
        ("raw-consume", "first records"),
        LIMIT_SECONDS,
    ),
    (
        "relay --burst: first claim",
        ("relay", "first claim"),
        "the same process: django.setup() done",
        ("relay", "django.setup()"),
        LIMIT_SECONDS,
    ),
    (
        "relay --burst: first write-back",
        ("relay", "first write-back"),
        "bare kafka-python producer (acks=all, idempotent): first ack",
        ("raw-produce", "first ack"),
        None,
    ),
)


def compiled() -> str:
    """Bytecode for this tree's own modules, as an installed package has it; what was done.

    pip compiles a wheel's modules when it installs them; an editable tree has only the
    ``__pycache__`` its imports wrote, and none at all under ``PYTHONDONTWRITEBYTECODE=1``
    (CI's, and many containers'): every launch then compiled about 150 modules from
    source, 0.1-0.2 s of each child's ``django.setup()`` on a slow machine. Written here
    whatever that variable says (``compileall`` ignores it); the children read it.
    """
    import compileall

    trees = [ROOT / "django_outbox", ROOT / "testproject"]
    ok = all(compileall.compile_dir(str(tree), quiet=1) for tree in trees)
    names = ", ".join(tree.name for tree in trees)
    return f"bytecode of {names} compiled" if ok else f"compiling {names} failed (launches compile)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here (bench/run.py)")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    parent(args)


# ---------------------------------------------------------------------- the child


def child(command: str) -> None:
    launched = float(os.environ["STARTUP_LAUNCHED"])
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks.setdefault(name, time.time() - launched)

    mark("interpreter")
    if command.startswith("raw-"):
        bare_client(command, mark)
        print(json.dumps(marks))
        return
    import django

    mark("import django")
    django.setup()
    mark("django.setup()")
    from django.core.management import call_command, load_command_class

    name = "outbox_relay" if command == "relay" else "outbox_consume"
    load_command_class("django_outbox", name)
    mark("command imported")
    from django.core import checks

    # as ``manage.py`` runs the command: its system checks first (call_command skips them)
    after(checks, "run_checks", lambda _: mark("system checks"))
    if command == "relay":
        relay_marks(mark)
        call_command(name, "--burst", verbosity=0, skip_checks=False)
    else:
        consumer_marks(mark)
        call_command(name, "--burst", "--group", os.environ["STARTUP_GROUP"], skip_checks=False)
    mark("end")
    print(json.dumps(marks))


def after(owner: Any, name: str, on_return: Any) -> None:
    """Wrap ``owner.name`` so that ``on_return(result)`` sees each of its results."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        on_return(result)
        return result

    setattr(owner, name, wrapper)


def relay_marks(mark: Any) -> None:
    from django_outbox import kafka
    from django_outbox.relay import claims, coordination, write_back

    def sent(sending: Any) -> None:
        mark("first send")
        for _, future in sending.futures[:1]:
            if hasattr(future, "add_callback"):
                future.add_callback(lambda _: mark("first ack"))

    after(coordination.Coordination, "tick", lambda _: mark("buckets ticked"))
    after(kafka, "build_relay_producer", lambda _: mark("producer built"))
    after(claims, "claim", lambda claim: claim.rows and mark("first claim"))
    after(kafka, "send_batch", sent)
    after(write_back, "write_back", lambda _: mark("first write-back"))


def consumer_marks(mark: Any) -> None:
    from kafka.coordinator.base import BaseCoordinator

    from django_outbox import kafka
    from django_outbox.consumer.handling import Handling

    def built(client: Any) -> None:
        mark("client built")

        def polled(batch: Any) -> None:
            mark("first poll returned")
            if batch:
                mark("first records")

        after(client, "poll", polled)

    after(kafka, "build_group_consumer", built)
    after(BaseCoordinator, "_handle_find_coordinator_response", lambda _: mark("coordinator"))
    after(BaseCoordinator, "_process_join_group_response", lambda _: mark("JoinGroup"))
    after(BaseCoordinator, "_process_sync_group_response", lambda _: mark("SyncGroup"))
    after(kafka.CommitOnRevoke, "on_partitions_assigned", lambda _: mark("assigned"))
    after(Handling, "handle_batch", lambda _: mark("first chunk handled"))
    if os.environ.get("STARTUP_PROFILE"):
        import cProfile
        import pstats

        original = Handling.handle_batch
        calls = [0]

        def profiled(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] > 1:
                return original(*args, **kwargs)
            profile = cProfile.Profile()
            try:
                return profile.runcall(original, *args, **kwargs)
            finally:
                pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(25)

        Handling.handle_batch = profiled


def bare_client(command: str, mark: Any) -> None:
    """A kafka-python client alone, no Django: the baseline of a worker's start-up."""
    from kafka import KafkaConsumer, KafkaProducer

    mark("import kafka")
    bootstrap = os.environ["STARTUP_BOOTSTRAP"].split(",")
    if command == "raw-consume":
        consumer = KafkaConsumer(
            os.environ["CHAT_TOPIC"],
            bootstrap_servers=bootstrap,
            group_id=os.environ["STARTUP_GROUP"],
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        mark("client built")
        deadline = time.monotonic() + 60
        while not consumer.poll(timeout_ms=100):
            if time.monotonic() > deadline:
                raise SystemExit("the bare consumer got no record within 60 s")
        mark("first records")
        consumer.close()
        return
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    mark("client built")
    producer.send(os.environ["STARTUP_RAW_TOPIC"], b"startup").get(timeout=60)
    mark("first ack")
    producer.close()


# ---------------------------------------------------------------------- the parent


def parent(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from django_outbox import kafka
    from django_outbox.models import OutboxMessage, Status

    sys.path.insert(0, str(ROOT / "bench"))
    from consumer_bench import ensure_database

    ensure_database(connection)
    call_command("migrate", verbosity=0)
    topic = f"bench-startup-{uuid.uuid4().hex[:8]}"
    topics = [topic, f"{topic}-raw"]
    with kafka.build_admin() as admin:
        admin.create_topics([kafka.NewTopic(name, 3, 1) for name in topics])
        admin.wait_for_topics(topics, timeout_ms=30000)
    publish(topic, args.events)
    rows = OutboxMessage.objects.filter(topic=topic)
    print(f"database {connection.vendor}, topic {topic}, {args.events} events")
    print(compiled())
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in CHILDREN}
    env = {
        **os.environ,
        "CHAT_TOPIC": topic,
        "STARTUP_RAW_TOPIC": topics[1],
        "STARTUP_BOOTSTRAP": ",".join(kafka.bootstrap_servers()),
    }
    try:
        for repetition in range(args.repeat):
            # Bench set-up, not a transition: the same rows go out again.
            rows.update(status=Status.PENDING)
            timings["relay"].append(run_child("relay", env))
            # the consumer and its bare baseline alternate, as do the others' benches
            for name in ("consume", "raw-consume")[:: -1 if repetition % 2 else 1]:
                group = {"STARTUP_GROUP": f"bench-startup-{uuid.uuid4().hex[:8]}"}
                timings[name].append(run_child(name, {**env, **group}))
            timings["raw-produce"].append(run_child("raw-produce", env))
            print(
                f"repetition {repetition + 1}: "
                + "; ".join(f"{name} {phases(marks[-1])}" for name, marks in timings.items())
            )
    finally:
        with kafka.build_admin() as admin:
            admin.delete_topics(topics)
    for name, marks in timings.items():
        median = {key: statistics.median(m[key] for m in marks if key in m) for key in marks[0]}
        print(f"{name}, median seconds since launch: {phases(median)}")
    if args.json:
        write_json(args.json, connection.vendor, timings)


def publish(topic: str, events: int) -> None:
    """``events`` chat messages on ``topic``, in one transaction (the relay's work)."""
    from django.db import transaction
    from django.test.utils import override_settings

    from django_outbox import publish_event
    from testproject.chat.models import Conversation
    from testproject.chat.services import MESSAGE_CREATED

    conversation = Conversation.objects.create(title="startup bench")
    with override_settings(OUTBOX_TOPICS={MESSAGE_CREATED: topic}, OUTBOX_WAKE_RELAY=False):
        with transaction.atomic():
            for n in range(events):
                publish_event(
                    MESSAGE_CREATED,
                    {
                        "conversation_id": conversation.pk,
                        "author": "bench",
                        "text": f"message {n}",
                        "sent_at": "2026-12-01T00:00:00.000000Z",
                    },
                    key=f"conversation-{n % 10}",
                )


def write_json(path: Path, vendor: str, timings: dict[str, list[dict[str, float]]]) -> None:
    """``FIGURES`` of each repetition that has both marks (bench/results.py)."""
    import results

    figures = []
    for name, (child, mark), baseline_name, (base_child, base_mark), limit in FIGURES:
        pairs = [
            (marks[mark], base[base_mark])
            for marks, base in zip(timings[child], timings[base_child], strict=True)
            if mark in marks and base_mark in base
        ]
        figures.append(
            results.Figure(
                name=name,
                unit="s",
                higher_is_better=False,
                baseline_name=baseline_name,
                values=[round(value, 4) for value, _ in pairs],
                baseline_values=[round(value, 4) for _, value in pairs],
                limit=limit,
            )
        )
    results.write(path, "startup", vendor, figures)
    print(f"figures written to {path}")


def run_child(command: str, env: dict[str, str]) -> dict[str, float]:
    env = {**env, "STARTUP_LAUNCHED": repr(time.time())}
    done = subprocess.run(
        [sys.executable, __file__, "--child", command],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{command} failed:\n{done.stdout}\n{done.stderr}")
    if os.environ.get("STARTUP_PROFILE"):
        print(done.stderr, file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def phases(marks: dict[str, float]) -> str:
    return ", ".join(f"{name} {at:.2f}" for name, at in sorted(marks.items(), key=lambda i: i[1]))


if __name__ == "__main__":
    main()
