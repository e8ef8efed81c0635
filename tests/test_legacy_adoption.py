"""A database that already has the Go service's table adopts the app with --fake-initial."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from django_outbox import publish_event
from django_outbox.models import OutboxMessage, Status
from tests.legacy import LEGACY_MYSQL_COLUMNS, LEGACY_MYSQL_DDL, drop_app_tables
from tests.test_schema import describe_columns

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'mysql'", reason="the legacy DDL is MySQL's"),
]


@pytest.fixture
def legacy_database():
    """The state of a production database before the app: only the Go service's table."""
    drop_app_tables()
    with connection.cursor() as cursor:
        cursor.execute(LEGACY_MYSQL_DDL)
        # a row the Go service wrote, letting GORM's column defaults fill retry_count/max_retry
        cursor.execute(
            "INSERT INTO agent_outbox_messages (biz_type, topic, message_key, payload, status, "
            "created_at, updated_at) VALUES (%s, %s, %s, %s, 'pending', NOW(3), NOW(3))",
            ["chat.message.created", "chat.messages", "conversation-9", json.dumps({"go": True})],
        )
    MigrationRecorder.Migration.objects.filter(app="django_outbox").delete()


def test_fake_initial_adopts_the_table_and_django_writes_into_it(legacy_database):
    call_command("migrate", "django_outbox", fake_initial=True, verbosity=0, stdout=io.StringIO())

    applied = MigrationRecorder.Migration.objects.filter(app="django_outbox")
    assert "0001_initial" in set(applied.values_list("name", flat=True))
    assert describe_columns() == LEGACY_MYSQL_COLUMNS  # untouched by the adoption

    go_row = OutboxMessage.objects.get(message_key="conversation-9")
    assert (go_row.status, go_row.retry_count, go_row.max_retry) == (Status.PENDING, 0, 20)

    row = publish_event("chat.message.created", {"text": "from django"}, key="conversation-9")
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert stored.event.data == {"text": "from django"}
    assert stored.event_type == "chat.message.created"
