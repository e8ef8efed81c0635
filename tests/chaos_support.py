"""The programs of the chaos test (tests/test_chaos.py), and what it shares with them.

Usage (the test starts these; each is also runnable by hand against a database):

    python tests/chaos_support.py writer NAME SEED RATE TOPIC LEDGER MARKERS
    python tests/chaos_support.py consumer NAME [outbox_consume arguments]

Environment: DJANGO_SETTINGS_MODULE (tests.relay_subprocess_settings), DATABASE_URL (the
test database), KAFKA_BOOTSTRAP_SERVERS (the chaos broker), and for writers
OUTBOX_CHAOS_WAKE ("on", the default, or "off": whether commits wake the relays).

**writer** publishes events of ``EVENT_TYPE`` with ``publish_event()`` inside
``transaction.atomic()``, each together with a business row in ``LEDGER_TABLE`` (same
transaction). Some transactions roll back on purpose after ``publish_event()``, some roll
back a savepoint holding one event while the rest commits. It appends one JSON line per
outcome to the file LEDGER: ``{"outcome": "commit" | "rollback" | "unknown", "events":
[[event_id, outbox_id], ...]}`` ("unknown": the database failed, e.g. during COMMIT; the
database alone knows). SIGUSR1: the next transaction, after its ``publish_event()`` calls,
writes ``MARKERS/hung-NAME.json`` (its events) and sleeps inside the transaction until the
process is killed. SIGTERM: finish the transaction in hand and exit 0.

**consumer** runs ``manage.py outbox_consume`` with a handler for ``EVENT_TYPE`` that
inserts one row per handled event into ``EFFECT_TABLE`` inside the consumer's transaction.
That table has no unique constraint, so a handler that ran twice shows as two rows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

EVENT_TYPE = "chaos.happened"
LEDGER_TABLE = "chaos_ledger"
EFFECT_TABLE = "chaos_effect"

#: The test creates these on the test database (PostgreSQL) and drops them afterwards.
CREATE_TABLES = (
    f"CREATE TABLE {LEDGER_TABLE} ("
    " event_id uuid PRIMARY KEY, outbox_id bigint NOT NULL,"
    " writer text NOT NULL, tx integer NOT NULL)",
    # No unique constraint on purpose: duplicate effects must be countable.
    f"CREATE TABLE {EFFECT_TABLE} ("
    " id bigserial PRIMARY KEY, event_id uuid NOT NULL, consumer text NOT NULL,"
    " pid integer NOT NULL, handled_at timestamptz NOT NULL DEFAULT now())",
)
DROP_TABLES = tuple(f"DROP TABLE IF EXISTS {name}" for name in (LEDGER_TABLE, EFFECT_TABLE))

#: Group membership that notices a killed consumer in seconds (cf. tests/consumer_support.py).
CHAOS_GROUP_OPTIONS = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "fetch_max_wait_ms": 100,
}

#: Share of transactions rolled back on purpose after publish_event(), and of committed
#: ones that roll back one savepoint holding an event.
ROLLBACK_SHARE = 0.15
SAVEPOINT_ROLLBACK_SHARE = 0.10
KEYS_PER_WRITER = 16


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The outcome lines of a writer's ledger; a line cut by SIGKILL is ignored."""
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _setup_django() -> None:
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "testproject")]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.relay_subprocess_settings")
    import django

    django.setup()


class _Rollback(Exception):
    """Raised inside a transaction to roll it back on purpose."""


def writer(name: str, seed: int, rate: float, topic: str, ledger_path: str, markers: str) -> int:
    _setup_django()
    from django.db import Error, connection, transaction
    from django.test import override_settings

    from django_outbox import publish_event

    stop = False
    hang = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    def on_usr1(signum: int, frame: object) -> None:
        nonlocal hang
        hang = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    rng = random.Random(seed)
    wake = {"OUTBOX_WAKE_RELAY": os.environ.get("OUTBOX_CHAOS_WAKE", "on") != "off"}
    ledger = open(ledger_path, "a", buffering=1)

    def record(outcome: str, events: list[tuple[str, int]]) -> None:
        if events:
            ledger.write(json.dumps({"outcome": outcome, "events": events}) + "\n")

    def publish(tx: int, index: int) -> tuple[str, int]:
        key = f"{name}-k{rng.randrange(KEYS_PER_WRITER)}"
        message = publish_event(
            EVENT_TYPE,
            {"writer": name, "tx": tx, "n": index, "pad": "x" * rng.randrange(10, 300)},
            key=key,
            topic=topic,
        )
        event_id = str(message.event.event_id)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {LEDGER_TABLE} (event_id, outbox_id, writer, tx)"
                " VALUES (%s, %s, %s, %s)",
                [event_id, message.pk, name, tx],
            )
        return event_id, message.pk

    def hang_here(events: list[tuple[str, int]]) -> None:
        marker = Path(markers, f"hung-{name}.json")
        partial = marker.with_suffix(".tmp")
        partial.write_text(json.dumps({"events": events, "pid": os.getpid()}))
        partial.rename(marker)
        while not stop:  # until SIGKILL; a SIGTERM rolls the transaction back
            time.sleep(0.2)
        raise _Rollback

    tx = 0
    mean_events = 1.75  # of the choice below
    with override_settings(**wake):
        while not stop:
            tx += 1
            count = rng.choice((1, 1, 2, 3))
            roll_back = rng.random() < ROLLBACK_SHARE
            savepoint = not roll_back and rng.random() < SAVEPOINT_ROLLBACK_SHARE
            events: list[tuple[str, int]] = []
            undone: list[tuple[str, int]] = []
            try:
                with transaction.atomic():
                    for index in range(count):
                        events.append(publish(tx, index))
                    if savepoint:
                        try:
                            with transaction.atomic():
                                undone.append(publish(tx, count))
                                raise _Rollback
                        except _Rollback:
                            pass
                    if hang:
                        hang_here(events)
                    if roll_back:
                        raise _Rollback
                record("commit", events)
            except _Rollback:
                record("rollback", events)
            except Error as exc:  # a terminated backend, maybe during COMMIT
                print(f"writer {name}: transaction {tx}: {exc!r}", file=sys.stderr, flush=True)
                record("unknown", events)
                connection.close()
                time.sleep(0.2)
            record("rollback", undone)
            time.sleep(rng.expovariate(rate / mean_events))
    ledger.close()
    return 0


def consumer(name: str, arguments: list[str]) -> int:
    _setup_django()
    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings

    from django_outbox.registry import registry

    def record_effect(event: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {EFFECT_TABLE} (event_id, consumer, pid) VALUES (%s, %s, %s)",
                [str(event.event_id), name, os.getpid()],
            )

    registry.register(EVENT_TYPE, record_effect)
    with override_settings(
        OUTBOX_KAFKA_CONSUMER=CHAOS_GROUP_OPTIONS,
        OUTBOX_KAFKA_BOOTSTRAP_SERVERS=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    ):
        call_command("outbox_consume", *arguments)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["writer"] and len(argv) == 7:
        _, name, seed, rate, topic, ledger, markers = argv
        return writer(name, int(seed), float(rate), topic, ledger, markers)
    if argv[:1] == ["consumer"] and len(argv) >= 2:
        return consumer(argv[1], argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
