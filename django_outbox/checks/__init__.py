"""System checks of the ``OUTBOX_*`` settings (ids ``django_outbox.E0xx`` / ``W0xx``), one
module per setting area; ``AppConfig.ready()`` registers ``ALL`` and ``DEPLOY`` under ``TAG``.

- ``kafka``: brokers, client options, which client (E001, E008, W002, E080, E081, W080);
- ``database``: the outbox's aliases and the relay's, time zone (E002, E003, E012, W003);
- ``topics``: where events go, and their copies on the cluster (E004, E005, W001, W050);
- ``relay``: retries, lease, polling, batch, strict order, retired settings (E006, E007,
  E011, W004);
- ``consumer``: the group, unknown event types, handlers (E009, E010, W060, W061);
- ``cloudevents``: the CloudEvents headers (E030, E031, W030);
- ``observability``: metrics and the ordering detector (W020, E020, E021);
- ``admin``: the admin's static file (W040).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.core.checks import CheckMessage

from django_outbox.checks.admin import check_admin_static
from django_outbox.checks.cloudevents import check_cloudevents
from django_outbox.checks.consumer import (
    check_consumer_group,
    check_handlers,
    check_unknown_event_policy,
)
from django_outbox.checks.database import check_databases, check_time_zone
from django_outbox.checks.kafka import (
    check_bootstrap_servers,
    check_client_options,
    check_kafka_client,
)
from django_outbox.checks.observability import check_metrics
from django_outbox.checks.relay import check_numbers, check_retired_settings, check_strict_order
from django_outbox.checks.topics import check_dead_letter_topic, check_replication, check_topics

TAG = "django_outbox"
Check = Callable[..., list[CheckMessage]]

#: Checks that need the network: registered with ``deploy=True``, so that a plain
#: ``manage.py check`` never waits for Kafka.
DEPLOY: Sequence[Check] = (check_replication,)

ALL: Sequence[Check] = (
    check_bootstrap_servers,
    check_databases,
    check_topics,
    check_numbers,
    check_client_options,
    check_consumer_group,
    check_strict_order,
    check_retired_settings,
    check_unknown_event_policy,
    check_time_zone,
    check_cloudevents,
    check_metrics,
    check_admin_static,
    check_handlers,
    check_kafka_client,
    check_dead_letter_topic,
)
