"""The app's settings, read from ``django.conf.settings`` each time they are used.

Nothing here is frozen at import, so ``override_settings`` and pytest-django's
``settings`` fixture take effect immediately.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

#: Settings of earlier versions that do nothing now (check ``django_outbox.W004``).
RETIRED = {
    "FAST_PATH": "the commit now wakes the relay instead (OUTBOX_WAKE_RELAY)",
    "FAST_PATH_MODE": "the request sends nothing to Kafka any more",
    "FAST_PATH_TIMEOUT": "the request sends nothing to Kafka any more",
}

#: Defaults of every ``OUTBOX_*`` setting; see README.rst for what each means.
DEFAULTS: dict[str, Any] = {
    "KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1:9092"],
    "DEFAULT_TOPIC": None,
    "TOPICS": {},
    "MAX_RETRY": 20,
    "DATABASE": "default",
    "DATABASES": None,  # aliases the relay serves; None means [DATABASE]
    "KAFKA_PRODUCER": {},
    "KAFKA_CONSUMER": {},
    "KAFKA_CLIENT": "kafka-python",  # the relay's producer: or "confluent" (librdkafka)
    "CONFLUENT_OPTIONS": {},  # librdkafka options of the "confluent" producer, applied last
    "CONSUMER_GROUP": "django-outbox",
    "WAKE_RELAY": True,  # the commit wakes the relay (NOTIFY on PostgreSQL, in-process)
    "POLL_INTERVAL": 0.2,  # seconds between idle polls where no notification can come
    "STRICT_ORDER": False,  # True, or a list of event types: hold a key behind its failures
    "LEASE_SECONDS": 60,
    "RELAY_BUCKETS": True,  # relays of one database share it by key (buckets.py)
    "RETRY_BACKOFF_BASE": 1.0,  # seconds before the first retry
    "RETRY_BACKOFF_MAX": 3600.0,  # cap of the exponential backoff, seconds
    "BATCH_SIZE": 500,
    "UNKNOWN_EVENT_POLICY": "skip",  # or "retry" / "dead"
    "CLOUDEVENTS": False,  # add the CloudEvents binary-mode headers (cloudevents.py)
    "CLOUDEVENTS_SOURCE": None,  # ce_source; None means "/django-outbox/<database alias>"
    "METRICS": False,  # Prometheus metrics in every process (docs/observability.rst)
    "METRICS_INTERVAL": 15.0,  # seconds between two refreshes of the backlog gauges
    "ORDERING_KEYS": 1000,  # keys per partition the ordering detector remembers; 0: off
    "DEAD_LETTER_TOPIC": None,  # a copy of given-up/rejected records: "{topic}.DLT"; None: off
    "CONSUMER_SUBTRANSACTIONS": 64,  # PostgreSQL: savepoints before a chunk ends early; 0: any
}


class OutboxSettings:
    """Typed, access-time view of the ``OUTBOX_*`` Django settings."""

    prefix = "OUTBOX_"

    def _get(self, name: str) -> Any:
        return getattr(django_settings, self.prefix + name, DEFAULTS.get(name))

    @property
    def kafka_bootstrap_servers(self) -> list[str]:
        value = self._get("KAFKA_BOOTSTRAP_SERVERS")
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return list(value)

    @property
    def default_topic(self) -> str | None:
        value = self._get("DEFAULT_TOPIC")
        return value or None

    @property
    def topics(self) -> dict[str, str]:
        return dict(self._get("TOPICS"))

    @property
    def max_retry(self) -> int:
        return int(self._get("MAX_RETRY"))

    @property
    def database(self) -> str:
        return str(self._get("DATABASE"))

    @property
    def databases(self) -> list[str]:
        value = self._get("DATABASES")
        if value is None:
            return [self.database]
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return list(value)

    @property
    def kafka_producer(self) -> dict[str, Any]:
        return dict(self._get("KAFKA_PRODUCER"))

    @property
    def kafka_client(self) -> str:
        return str(self._get("KAFKA_CLIENT"))

    @property
    def confluent_options(self) -> dict[str, Any]:
        return dict(self._get("CONFLUENT_OPTIONS"))

    @property
    def kafka_consumer(self) -> dict[str, Any]:
        return dict(self._get("KAFKA_CONSUMER"))

    @property
    def consumer_group(self) -> str:
        return str(self._get("CONSUMER_GROUP"))

    @property
    def wake_relay(self) -> bool:
        return bool(self._get("WAKE_RELAY"))

    @property
    def poll_interval(self) -> float:
        return float(self._get("POLL_INTERVAL"))

    @property
    def strict_order(self) -> bool | frozenset[str]:
        """``True``/``False`` for every type, or the event types held in strict order."""
        value = self._get("STRICT_ORDER")
        return value if isinstance(value, bool) else frozenset(value or ())

    @property
    def relay_buckets(self) -> bool:
        return bool(self._get("RELAY_BUCKETS"))

    @property
    def lease_seconds(self) -> float:
        return float(self._get("LEASE_SECONDS"))

    @property
    def retry_backoff_base(self) -> float:
        return float(self._get("RETRY_BACKOFF_BASE"))

    @property
    def retry_backoff_max(self) -> float:
        return float(self._get("RETRY_BACKOFF_MAX"))

    @property
    def batch_size(self) -> int:
        return int(self._get("BATCH_SIZE"))

    @property
    def consumer_subtransactions(self) -> int:
        return int(self._get("CONSUMER_SUBTRANSACTIONS"))

    @property
    def unknown_event_policy(self) -> str:
        return str(self._get("UNKNOWN_EVENT_POLICY"))

    @property
    def cloudevents(self) -> bool:
        """Read once per relayed row: remembered until a setting changes (see ``_remembered``)."""
        return self._remembered("CLOUDEVENTS") is True

    def _remembered(self, name: str) -> Any:
        # Reading an unset setting costs ~2 us (LazySettings raises AttributeError
        # inside), as much as building a record's headers. Django announces every
        # supported change (override_settings, pytest-django's settings fixture) with
        # setting_changed, which empties this memo.
        try:
            return _memo[name]
        except KeyError:
            value = _memo[name] = self._get(name)
            return value

    @property
    def cloudevents_source(self) -> str | None:
        value = self._get("CLOUDEVENTS_SOURCE")
        return str(value) if value else None

    @property
    def metrics(self) -> bool:
        return bool(self._get("METRICS"))

    @property
    def metrics_interval(self) -> float:
        return float(self._get("METRICS_INTERVAL"))

    @property
    def ordering_keys(self) -> int:
        return int(self._get("ORDERING_KEYS"))

    @property
    def dead_letter_topic(self) -> str | None:
        """The pattern of the dead-letter topics (``{topic}``, ``{group}``), or None: off."""
        value = self._get("DEAD_LETTER_TOPIC")
        return value if isinstance(value, str) and value else None

    def topic_for(self, event_type: str) -> str | None:
        """The topic an event type goes to: ``OUTBOX_TOPICS``, then ``OUTBOX_DEFAULT_TOPIC``."""
        return self.topics.get(event_type) or self.default_topic

    def raw(self, name: str) -> Any:
        """The raw configured value of ``OUTBOX_<name>`` (for the system checks)."""
        return self._get(name)

    def is_set(self, name: str) -> bool:
        """Whether the project sets ``OUTBOX_<name>`` at all."""
        return hasattr(django_settings, self.prefix + name)


_memo: dict[str, Any] = {}


def _forget(**kwargs: Any) -> None:
    _memo.clear()


setting_changed.connect(_forget, dispatch_uid="django_outbox.conf.forget")

outbox_settings = OutboxSettings()
