"""System checks of the ``OUTBOX_*`` settings (ids ``django_outbox.E0xx`` / ``W0xx``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_outbox import cloudevents
from django_outbox.conf import DEFAULTS, RETIRED, outbox_settings
from django_outbox.topics import topic_problem

TAG = "django_outbox"
POLICIES = ("skip", "retry", "dead")
CLIENTS = ("kafka-python", "confluent")
Messages = list[CheckMessage]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_bootstrap_servers(**kwargs: Any) -> Messages:
    value = outbox_settings.raw("KAFKA_BOOTSTRAP_SERVERS")
    servers = value.split(",") if isinstance(value, str) else value
    ok = isinstance(servers, list | tuple) and bool(servers)
    ok = ok and all(isinstance(s, str) and s.strip().rpartition(":")[2].isdigit() for s in servers)
    if ok:
        return []
    return [
        Error(
            f"OUTBOX_KAFKA_BOOTSTRAP_SERVERS is {value!r}.",
            hint="Set it to 'host:port' strings: a list, or one comma-separated string.",
            id="django_outbox.E001",
        )
    ]


def check_databases(**kwargs: Any) -> Messages:
    messages: Messages = []
    known = set(settings.DATABASES)
    database = outbox_settings.raw("DATABASE")
    if database not in known:
        messages.append(
            Error(
                f"OUTBOX_DATABASE is {database!r}, which is not in DATABASES.",
                hint=f"Use one of {sorted(known)}.",
                id="django_outbox.E002",
            )
        )
    aliases = outbox_settings.raw("DATABASES")
    if aliases is not None:
        listed = aliases.split(",") if isinstance(aliases, str) else aliases
        unknown = [a for a in listed if not isinstance(a, str) or a.strip() not in known]
        if not isinstance(listed, list | tuple) or not listed or unknown:
            messages.append(
                Error(
                    f"OUTBOX_DATABASES is {aliases!r}; {unknown or 'it'} is not a DATABASES alias.",
                    hint=f"List the aliases the relay serves, from {sorted(known)}, or leave it "
                    "unset to serve OUTBOX_DATABASE only.",
                    id="django_outbox.E003",
                )
            )
            return messages
    messages.extend(_unserved_databases(known))
    return messages


def _unserved_databases(known: set[str]) -> Messages:
    """E012: publish_event() writes to OUTBOX_DATABASE by default; a relay must serve it.

    (``publish_event(using=...)`` refuses any alias the relay does not serve.)
    """
    served = outbox_settings.databases
    database = outbox_settings.database
    if database in served or database not in known:
        return []
    return [
        Error(
            f"OUTBOX_DATABASE is {database!r}, which the relay does not serve "
            f"(OUTBOX_DATABASES is {served}): events published there would never leave.",
            hint=f"Add {database!r} to OUTBOX_DATABASES, or point OUTBOX_DATABASE at one of "
            f"{served}.",
            id="django_outbox.E012",
        )
    ]


def check_topics(**kwargs: Any) -> Messages:
    messages: Messages = []
    topics = outbox_settings.raw("TOPICS")
    if not isinstance(topics, dict):
        return [
            Error(
                "OUTBOX_TOPICS must be a dict of event type to topic, "
                f"not {type(topics).__name__}.",
                hint="For example {'chat.message.created': 'chat-events'}.",
                id="django_outbox.E004",
            )
        ]
    for event_type, topic in topics.items():
        problem = topic_problem(topic)
        if not isinstance(event_type, str) or not event_type or len(event_type) > 64:
            problem = f"event type {event_type!r} is not a string of 1 to 64 characters"
        if problem:
            messages.append(
                Error(
                    f"OUTBOX_TOPICS[{event_type!r}]: {problem}.",
                    hint="Fix or remove that entry.",
                    id="django_outbox.E004",
                )
            )
    default = outbox_settings.raw("DEFAULT_TOPIC")
    if default is not None and (problem := topic_problem(default)):
        messages.append(
            Error(
                f"OUTBOX_DEFAULT_TOPIC: {problem}.",
                hint="Use a valid Kafka topic name, or None to require a topic per event type.",
                id="django_outbox.E005",
            )
        )
    if default is None and not topics:
        messages.append(
            Warning(
                "Neither OUTBOX_DEFAULT_TOPIC nor OUTBOX_TOPICS is set.",
                hint="Every publish_event() call will need topic=...; set OUTBOX_DEFAULT_TOPIC.",
                id="django_outbox.W001",
            )
        )
    return messages


def check_numbers(**kwargs: Any) -> Messages:
    messages: Messages = []
    max_retry = outbox_settings.raw("MAX_RETRY")
    if not isinstance(max_retry, int) or isinstance(max_retry, bool) or max_retry < 0:
        messages.append(
            Error(
                f"OUTBOX_MAX_RETRY is {max_retry!r}.",
                hint=f"Use a whole number >= 0 (default {DEFAULTS['MAX_RETRY']}).",
                id="django_outbox.E006",
            )
        )
    for name in (
        "LEASE_SECONDS",
        "POLL_INTERVAL",
        "RETRY_BACKOFF_BASE",
        "RETRY_BACKOFF_MAX",
        "BATCH_SIZE",
    ):
        value = outbox_settings.raw(name)
        if not _is_number(value) or value <= 0:
            messages.append(
                Error(
                    f"OUTBOX_{name} is {value!r}.",
                    hint=f"Use a positive number (default {DEFAULTS[name]}).",
                    id="django_outbox.E007",
                )
            )
    return messages


def check_client_options(**kwargs: Any) -> Messages:
    messages: Messages = []
    for name in ("KAFKA_PRODUCER", "KAFKA_CONSUMER"):
        value = outbox_settings.raw(name)
        if not isinstance(value, dict):
            messages.append(
                Error(
                    f"OUTBOX_{name} must be a dict of kafka-python options, "
                    f"not {type(value).__name__}.",
                    hint="For example {'compression_type': 'gzip'}.",
                    id="django_outbox.E008",
                )
            )
    producer = outbox_settings.raw("KAFKA_PRODUCER")
    if isinstance(producer, dict) and (
        producer.get("acks", "all") not in ("all", -1)
        or producer.get("enable_idempotence", True) is False
    ):
        messages.append(
            Warning(
                "OUTBOX_KAFKA_PRODUCER weakens delivery (acks other than 'all', or "
                "enable_idempotence=False).",
                hint="A row may then be marked published although Kafka lost it; "
                "keep acks='all' and the idempotent producer.",
                id="django_outbox.W002",
            )
        )
    group = outbox_settings.raw("CONSUMER_GROUP")
    if not isinstance(group, str) or not group.strip():
        messages.append(
            Error(
                f"OUTBOX_CONSUMER_GROUP is {group!r}.",
                hint="Use a non-empty consumer group id, e.g. 'billing-service'.",
                id="django_outbox.E009",
            )
        )
    strict = outbox_settings.raw("STRICT_ORDER")
    if not isinstance(strict, bool) and not (
        isinstance(strict, list | tuple | set | frozenset)
        and all(isinstance(t, str) for t in strict)
    ):
        messages.append(
            Error(
                f"OUTBOX_STRICT_ORDER is {strict!r}.",
                hint="Use True, False, or a list of event types held in strict key order.",
                id="django_outbox.E011",
            )
        )
    for name, why in RETIRED.items():
        if outbox_settings.is_set(name):
            messages.append(
                Warning(
                    f"OUTBOX_{name} is set but no longer used: {why}.",
                    hint=f"Remove OUTBOX_{name} from your settings (see README, 'Delivery').",
                    id="django_outbox.W004",
                )
            )
    policy = outbox_settings.raw("UNKNOWN_EVENT_POLICY")
    if policy not in POLICIES:
        messages.append(
            Error(
                f"OUTBOX_UNKNOWN_EVENT_POLICY is {policy!r}.",
                hint=f"Use one of {', '.join(POLICIES)}.",
                id="django_outbox.E010",
            )
        )
    return messages


def check_time_zone(**kwargs: Any) -> Messages:
    if settings.USE_TZ:
        return []
    return [
        Warning(
            "USE_TZ is False: Django reads and writes the outbox table's times as naive "
            "local times, while the Go service sharing it stores UTC.",
            hint="Set USE_TZ = True (and the Go DSN's parseTime=true&loc=UTC); see "
            "docs/go-service.rst, 'Times'.",
            id="django_outbox.W003",
        )
    ]


def check_cloudevents(**kwargs: Any) -> Messages:
    messages: Messages = []
    enabled = outbox_settings.raw("CLOUDEVENTS")
    if not isinstance(enabled, bool):
        messages.append(
            Error(
                f"OUTBOX_CLOUDEVENTS is {enabled!r}.",
                hint="Use True (add the CloudEvents headers to every record) or False.",
                id="django_outbox.E031",
            )
        )
    source = outbox_settings.raw("CLOUDEVENTS_SOURCE")
    if source is None:
        return messages
    problem = cloudevents.source_problem(source)
    if problem:
        messages.append(
            Error(
                f"OUTBOX_CLOUDEVENTS_SOURCE {problem}.",
                hint="Use a URI reference naming your service, e.g. '/billing' or "
                "'urn:example:billing', or None for '/django-outbox/<database alias>'.",
                id="django_outbox.E030",
            )
        )
    elif enabled is not True:
        messages.append(
            Warning(
                "OUTBOX_CLOUDEVENTS_SOURCE is set but OUTBOX_CLOUDEVENTS is not True: "
                "records carry no CloudEvents headers.",
                hint="Set OUTBOX_CLOUDEVENTS = True, or remove OUTBOX_CLOUDEVENTS_SOURCE.",
                id="django_outbox.W030",
            )
        )
    return messages


def check_metrics(**kwargs: Any) -> Messages:
    """W020: metrics asked for without prometheus-client; E020/E021: bad numbers."""
    from django_outbox.ops.metrics import INSTALL, available

    messages: Messages = []
    if outbox_settings.raw("METRICS") and not available():
        messages.append(
            Warning(
                "OUTBOX_METRICS is on, but prometheus-client is not installed: no metrics.",
                hint=f"{INSTALL}, or set OUTBOX_METRICS = False.",
                id="django_outbox.W020",
            )
        )
    interval = outbox_settings.raw("METRICS_INTERVAL")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        messages.append(
            Error(
                f"OUTBOX_METRICS_INTERVAL is {interval!r}.",
                hint="Use a number of seconds > 0 (default "
                f"{DEFAULTS['METRICS_INTERVAL']}) between two refreshes of the backlog gauges.",
                id="django_outbox.E020",
            )
        )
    keys = outbox_settings.raw("ORDERING_KEYS")
    if isinstance(keys, bool) or not isinstance(keys, int) or keys < 0:
        messages.append(
            Error(
                f"OUTBOX_ORDERING_KEYS is {keys!r}.",
                hint="Use a whole number >= 0: keys per partition the ordering detector "
                f"remembers (default {DEFAULTS['ORDERING_KEYS']}; 0 turns it off).",
                id="django_outbox.E021",
            )
        )
    return messages


def check_admin_static(**kwargs: Any) -> Messages:
    from django.apps import apps

    if not apps.is_installed("django.contrib.admin"):
        return []
    if apps.is_installed("django.contrib.staticfiles"):
        return []
    return [
        Warning(
            "The outbox admin takes its style sheet from the static file "
            "django_outbox/admin.css, and django.contrib.staticfiles is not installed.",
            hint="Add 'django.contrib.staticfiles' to INSTALLED_APPS (and run collectstatic), "
            "or serve django_outbox/static/ at STATIC_URL yourself.",
            id="django_outbox.W040",
        )
    ]


def check_handlers(**kwargs: Any) -> Messages:
    """Handlers whose argument's annotation disagrees with ``batch=`` (W060, W061)."""
    from django_outbox.registry import registry

    messages: Messages = []
    for event_type, registration in registry.registrations():
        problem = registration.mismatch()
        if problem is None:
            continue
        fix = "drop batch=True" if registration.batch else "add batch=True to @handler(...)"
        messages.append(
            Warning(
                f"the handler of {event_type!r} ({registration.name}): {problem}.",
                hint=f"Fix the annotation, or {fix} (see docs/consumer.rst, 'Batch handlers').",
                obj=registration.name,
                id="django_outbox.W060" if registration.batch else "django_outbox.W061",
            )
        )
    return messages


def check_kafka_client(**kwargs: Any) -> Messages:
    """E080: unknown OUTBOX_KAFKA_CLIENT, or "confluent" without confluent-kafka;
    E081: producer options that "confluent" cannot take; W080: options that weaken it."""
    from django_outbox import kafka

    client = outbox_settings.raw("KAFKA_CLIENT")
    if client not in CLIENTS:
        return [
            Error(
                f"OUTBOX_KAFKA_CLIENT is {client!r}.",
                hint=f"Use one of {', '.join(repr(c) for c in CLIENTS)}.",
                id="django_outbox.E080",
            )
        ]
    if client != "confluent":
        return []
    if not kafka.confluent_available():
        return [
            Error(
                'OUTBOX_KAFKA_CLIENT is "confluent" but confluent-kafka is not installed.',
                hint='pip install "django-outbox[confluent]" (or ".[confluent]" from a checkout), '
                'or use "kafka-python".',
                id="django_outbox.E080",
            )
        ]
    messages: Messages = []
    options = outbox_settings.raw("CONFLUENT_OPTIONS")
    if not isinstance(options, dict):
        messages.append(
            Error(
                f"OUTBOX_CONFLUENT_OPTIONS must be a dict of librdkafka options, "
                f"not {type(options).__name__}.",
                hint="For example {'compression.type': 'lz4'}.",
                id="django_outbox.E081",
            )
        )
    elif options.get("acks", -1) not in ("all", -1, "-1") or options.get(
        "enable.idempotence", True
    ) in (False, "false"):
        messages.append(
            Warning(
                "OUTBOX_CONFLUENT_OPTIONS weakens delivery (acks other than all, or "
                "enable.idempotence false).",
                hint="A row may then be marked published although Kafka lost it; "
                "keep acks=all and the idempotent producer.",
                id="django_outbox.W080",
            )
        )
    producer = outbox_settings.raw("KAFKA_PRODUCER")
    unknown = kafka.untranslatable_options(producer) if isinstance(producer, dict) else []
    if unknown:
        messages.append(
            Error(
                f"OUTBOX_KAFKA_PRODUCER option(s) {', '.join(unknown)} have no librdkafka "
                'name, and OUTBOX_KAFKA_CLIENT is "confluent".',
                hint="Give them in librdkafka's names in OUTBOX_CONFLUENT_OPTIONS "
                "(README, 'Kafka client').",
                id="django_outbox.E081",
            )
        )
    return messages


def check_dead_letter_topic(**kwargs: Any) -> Messages:
    """E070: ``OUTBOX_DEAD_LETTER_TOPIC`` is no usable name or pattern; E071: it names a
    topic the outbox consumes (the copies would be read again, and rejected again)."""
    from django_outbox.topics import dead_letter_pattern_problem, dead_letter_topic, source_topics

    pattern = outbox_settings.raw("DEAD_LETTER_TOPIC")
    if pattern is None:
        return []
    problem = dead_letter_pattern_problem(pattern)
    group = outbox_settings.consumer_group
    try:
        sources = source_topics()
    except (TypeError, ValueError):  # OUTBOX_TOPICS is no dict: E004 says so
        sources = []
    if problem is None:
        for topic in sources:
            problem = topic_problem(dead_letter_topic(topic, group) or "")
            if problem:
                problem = f"for topic {topic!r} and group {group!r}, {problem}"
                break
    if problem:
        return [
            Error(
                f"OUTBOX_DEAD_LETTER_TOPIC {problem}.",
                hint="Use a topic name, or a pattern with {topic} and {group} such as "
                "'{topic}.DLT', or None (no dead-letter topic). Nothing is copied meanwhile.",
                id="django_outbox.E070",
            )
        ]
    looping = [(t, dlt) for t in sources if (dlt := dead_letter_topic(t, group)) in sources]
    if looping:
        topic, dead = looping[0]
        return [
            Error(
                f"OUTBOX_DEAD_LETTER_TOPIC makes {dead!r} the dead-letter topic of {topic!r}, "
                f"and the outbox consumes {dead!r}: the copies would be read and rejected again.",
                hint="Give the dead-letter topics names of their own, e.g. '{topic}.DLT'.",
                id="django_outbox.E071",
            )
        ]
    return []


def check_replication(**kwargs: Any) -> Messages:
    """W050 (``check --deploy`` only: it asks the cluster, for 2 s at most): a topic the
    outbox writes to has one copy on a cluster of several brokers. Silent when no broker
    answers (``outbox_ready`` reports that)."""
    from django_outbox import kafka
    from django_outbox.topics import SINGLE_COPY_FIX, implied_topics, single_copy_problem

    names = implied_topics()
    if not names:
        return []
    try:
        admin = kafka.admin_client(timeout=2.0)
    except Exception:
        return []
    try:
        brokers = kafka.cluster_brokers(admin)
        topics = kafka.describe_topics(admin, names)
    except Exception:
        return []
    finally:
        admin.close()
    problems = [single_copy_problem(t.name, t.replication, brokers) for t in topics if t.exists]
    return [
        Warning(f"Outbox {problem}.", hint=SINGLE_COPY_FIX, id="django_outbox.W050")
        for problem in problems
        if problem
    ]


#: Checks that need the network: registered with ``deploy=True``, so that a plain
#: ``manage.py check`` never waits for Kafka.
DEPLOY: Sequence[Callable[..., Messages]] = (check_replication,)

ALL: Sequence[Callable[..., Messages]] = (
    check_bootstrap_servers,
    check_databases,
    check_topics,
    check_numbers,
    check_client_options,
    check_time_zone,
    check_cloudevents,
    check_metrics,
    check_admin_static,
    check_handlers,
    check_kafka_client,
    check_dead_letter_topic,
)
