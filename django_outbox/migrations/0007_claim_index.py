"""The relay's claim index on PostgreSQL and SQLite (docs/decisions/0002-claim-index.rst).

``idx_outbox_status_id (status, id, next_retry_at)``: the claim reads the due rows in
id order through it, past none of the final rows. Not on MySQL/MariaDB: there the
claim reads the pending rows through the legacy status index and sorts them (a cost
that does not grow with the final rows either), and a second index starting with
``status`` made InnoDB lock index records in another order than the primary key,
deadlocking concurrent relays. Not in the model's ``Meta.indexes`` for that reason.

On PostgreSQL the index is built ``CONCURRENTLY`` (writes go on meanwhile), hence a
non-atomic migration. ``IF NOT EXISTS``: an operator may have built it beforehand.
"""

from django.db import migrations

NAME = "idx_outbox_status_id"
TABLE = "agent_outbox_messages"


def create_index(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in ("postgresql", "sqlite"):
        return
    concurrently = " CONCURRENTLY" if vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX{concurrently} IF NOT EXISTS {NAME} "
        f"ON {TABLE} (status, id, next_retry_at)"
    )


def drop_index(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in ("postgresql", "sqlite"):
        return
    concurrently = " CONCURRENTLY" if vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX{concurrently} IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("django_outbox", "0006_attempts_and_replay"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
