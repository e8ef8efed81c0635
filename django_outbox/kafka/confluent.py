"""The relay's optional librdkafka producer (``OUTBOX_KAFKA_CLIENT = "confluent"``).

The only module that imports ``confluent_kafka``, and only ``kafka/producers.py``
imports it, on first use. It knows nothing of kafka-python: ``producers.py`` hands it
the configuration in librdkafka's names (``config.confluent_config``), a function
that turns a librdkafka error into the exception the rest of the outbox understands
(``errors.confluent_error``), and the exception of a record not handed over in time
(``sending.NotSent``). It gives the same contract as the kafka-python
path: one outcome per record, acks awaited against a deadline, never an ack
assumed.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, libversion
from confluent_kafka import Producer as _Producer

logger = logging.getLogger(__name__)

#: Records produced between two ``poll(0)``: serves delivery reports while producing.
POLL_EVERY = 256
#: Seconds of one wait while the producer's queue is full (``BufferError``).
QUEUE_FULL_WAIT = 0.05
#: At most this many seconds to learn a topic's partitions before its first record.
METADATA_WAIT = 2.0
#: The names Kafka accepts for a topic; no metadata is asked for any other.
LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class Reports:
    """The delivery reports of one batch: which records were answered, and the errors."""

    __slots__ = ("answered", "errors", "pending", "positions")

    def __init__(self, size: int) -> None:
        self.answered = bytearray(size)
        self.errors: dict[int, BaseException] = {}
        self.pending = 0
        #: (partition, offset) of each acknowledged record, by index.
        self.positions: dict[int, tuple[int, int]] = {}


class Producer:
    """A ``confluent_kafka.Producer`` with the small interface the relay's sender needs."""

    #: ``kafka.send_batch`` and ``kafka.await_acks`` hand the work over on this mark.
    is_librdkafka = True

    def __init__(
        self,
        config: dict[str, Any],
        translate: Callable[[str, int, str, bool, bool], BaseException],
        not_sent: Callable[[str], BaseException],
    ) -> None:
        self._translate = translate
        self._not_sent = not_sent
        self._fatal: BaseException | None = None
        config = dict(config)
        config.setdefault("error_cb", self._on_error)
        # librdkafka's log lines go to Python logging (served by poll), not to stderr.
        config.setdefault("logger", logger)
        self._producer = _Producer(config)
        #: Topics whose partitions this producer asked for before their first record.
        self._looked_up: set[str] = set()

    def _error(self, error: KafkaError) -> BaseException:
        return self._translate(
            error.name(), error.code(), error.str(), error.retriable(), error.fatal()
        )

    def _on_error(self, error: KafkaError) -> None:
        # Client-level events (all brokers down, a fatal idempotence error); the
        # records concerned get their own delivery report.
        if error.fatal():
            self._fatal = self._error(error)

    def send_into(
        self, records: Sequence[Any], outcomes: list[Any], futures: list[Any], deadline: float
    ) -> None:
        """``produce`` each record; failures of one record go to ``outcomes`` alone."""
        self._look_up({record.topic for record in records}, deadline)
        reports = Reports(len(records))
        produce, poll = self._producer.produce, self._producer.poll
        error_of = self._error
        monotonic = time.monotonic

        def reporter(index: int) -> Callable[[Any, Any], None]:
            def report(err: Any, msg: Any) -> None:
                reports.pending -= 1
                reports.answered[index] = 1
                if err is not None:
                    reports.errors[index] = error_of(err)
                else:
                    reports.positions[index] = (msg.partition(), msg.offset())

            return report

        late = False
        for index, record in enumerate(records):
            if index % POLL_EVERY == 0 and not late:
                late = monotonic() >= deadline
                poll(0)
            if late:  # and so are the records after it: none overtakes another
                outcomes[index] = self._not_sent(
                    "not sent: the time allowed for this batch ran out"
                )
                continue
            while True:
                try:
                    produce(
                        record.topic,
                        record.value,
                        record.key,
                        headers=record.headers,
                        on_delivery=reporter(index),
                    )
                except BufferError:  # the local queue is full: serve reports, then again
                    if monotonic() >= deadline:
                        late = True
                        outcomes[index] = self._not_sent(
                            "not sent: the producer's queue stayed full"
                        )
                        break
                    poll(QUEUE_FULL_WAIT)
                    continue
                except KafkaException as exc:  # too large, unknown topic: this one only
                    outcomes[index] = error_of(exc.args[0])
                except Exception as exc:  # a bad argument: this one only
                    outcomes[index] = exc
                else:
                    reports.pending += 1
                    futures.append((index, reports))
                break

    def _look_up(self, topics: set[str], deadline: float) -> None:
        """Ask for the partitions of topics this producer has not sent to yet.

        Records handed to librdkafka for a topic it has no metadata for yet wait
        about half a second on its idempotent producer before the first is sent
        (measured: 10,000 records took 0.5 s against 0.05 s); a metadata request
        beforehand takes a few milliseconds. Asked once per topic and producer: a
        failure (no broker, no rights) is left to the records' own outcomes.
        """
        for topic in sorted(topics - self._looked_up):
            self._looked_up.add(topic)
            if not LEGAL_TOPIC.fullmatch(topic):
                continue  # an invalid name: produce() says so for its record alone
            wait = min(METADATA_WAIT, deadline - time.monotonic())
            if wait <= 0:
                return
            try:
                self._producer.list_topics(topic, timeout=wait)
            except Exception as exc:  # KafkaException: the records will say more
                logger.debug("outbox: no metadata for topic %r yet: %s", topic, exc)

    def await_into(
        self,
        futures: list[Any],
        outcomes: list[Any],
        left: Callable[[], float],
        flush: bool,
        slice_: float,
        not_acknowledged: Callable[[], BaseException],
    ) -> None:
        """Serve delivery reports until the records of ``futures`` are answered or time is up."""
        if not futures:
            return
        reports: Reports = futures[0][1]
        wait = self._producer.flush if flush else self._producer.poll
        while reports.pending > 0 and (remaining := left()) > 0:
            wait(min(remaining, slice_))
        for index, _ in futures:
            if not reports.answered[index]:
                outcomes[index] = not_acknowledged()
            elif (error := reports.errors.get(index)) is not None:
                outcomes[index] = error

    @staticmethod
    def positions_of(futures: list[Any]) -> dict[int, tuple[int, int]]:
        """(partition, offset) of the acknowledged records of ``futures``, by index."""
        return dict(futures[0][1].positions) if futures else {}

    @property
    def fatal(self) -> BaseException | None:
        """The fatal error the producer met (it then fails everything), if any."""
        return self._fatal

    def flush(self, timeout: float = 10.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds for what is queued, then drop the rest.

        ``timeout=0`` (a producer discarded because it cannot be trusted) drops
        nothing: a batch already handed to it (its ``InFlight`` holds it) still gets
        its acks when settled, and librdkafka drops the rest when the last reference
        goes. kafka-python's ``close(timeout=0)`` fails such a batch instead.
        """
        if timeout <= 0:
            self._producer.poll(0)
            return
        self._producer.flush(timeout)
        self._producer.purge()
        self._producer.flush(0)


def raw_producer(config: dict[str, Any]) -> Any:
    """A plain ``confluent_kafka.Producer`` (the benchmark's baseline)."""
    return _Producer(config)


def version() -> str:
    """The confluent-kafka and librdkafka versions, for logs and the benchmark."""
    from importlib.metadata import version as installed

    return f"confluent-kafka {installed('confluent-kafka')}, librdkafka {libversion()[0]}"
