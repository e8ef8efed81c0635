from __future__ import annotations

import pytest
from django.core.checks import run_checks

from django_outbox.conf import outbox_settings


def outbox_ids() -> set[str]:
    return {m.id for m in run_checks(tags=["django_outbox"]) if m.id}


def test_the_test_settings_pass():
    assert outbox_ids() == set()


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    [
        ("OUTBOX_KAFKA_BOOTSTRAP_SERVERS", [], "django_outbox.E001"),
        ("OUTBOX_KAFKA_BOOTSTRAP_SERVERS", "localhost", "django_outbox.E001"),
        ("OUTBOX_KAFKA_BOOTSTRAP_SERVERS", [9092], "django_outbox.E001"),
        ("OUTBOX_DATABASE", "missing", "django_outbox.E002"),
        ("OUTBOX_DATABASES", ["default", "missing"], "django_outbox.E003"),
        ("OUTBOX_DATABASES", [], "django_outbox.E003"),
        ("OUTBOX_TOPICS", ["a"], "django_outbox.E004"),
        ("OUTBOX_TOPICS", {"a.b": "bad topic"}, "django_outbox.E004"),
        ("OUTBOX_TOPICS", {"x" * 65: "fine"}, "django_outbox.E004"),
        ("OUTBOX_DEFAULT_TOPIC", "no/slashes", "django_outbox.E005"),
        ("OUTBOX_MAX_RETRY", -1, "django_outbox.E006"),
        ("OUTBOX_MAX_RETRY", "20", "django_outbox.E006"),
        ("OUTBOX_LEASE_SECONDS", 0, "django_outbox.E007"),
        ("OUTBOX_BATCH_SIZE", "big", "django_outbox.E007"),
        ("OUTBOX_KAFKA_PRODUCER", [("acks", "all")], "django_outbox.E008"),
        ("OUTBOX_KAFKA_CONSUMER", None, "django_outbox.E008"),
        ("OUTBOX_CONSUMER_GROUP", "", "django_outbox.E009"),
        ("OUTBOX_UNKNOWN_EVENT_POLICY", "ignore", "django_outbox.E010"),
        ("OUTBOX_STRICT_ORDER", "yes", "django_outbox.E011"),
        ("OUTBOX_STRICT_ORDER", [1], "django_outbox.E011"),
        ("OUTBOX_POLL_INTERVAL", 0, "django_outbox.E007"),
        ("OUTBOX_DATABASES", ["other"], "django_outbox.E012"),
        ("OUTBOX_FAST_PATH", True, "django_outbox.W004"),
        ("OUTBOX_FAST_PATH_MODE", "sync", "django_outbox.W004"),
        ("OUTBOX_KAFKA_PRODUCER", {"acks": 1}, "django_outbox.W002"),
        ("OUTBOX_KAFKA_PRODUCER", {"enable_idempotence": False}, "django_outbox.W002"),
    ],
)
def test_each_wrong_setting_has_its_check(settings, name, value, check_id):
    setattr(settings, name, value)
    assert outbox_ids() == {check_id}


def test_messages_name_the_fix(settings):
    settings.OUTBOX_DATABASE = "missing"
    (message,) = [m for m in run_checks(tags=["django_outbox"]) if m.id == "django_outbox.E002"]
    assert "'missing'" in message.msg
    assert "default" in message.hint and "other" in message.hint


def test_no_topic_at_all_is_a_warning(settings):
    settings.OUTBOX_DEFAULT_TOPIC = None
    settings.OUTBOX_TOPICS = {}
    assert outbox_ids() == {"django_outbox.W001"}


def test_use_tz_off_is_a_warning_that_names_the_go_dsn(settings):
    settings.USE_TZ = False
    (message,) = [m for m in run_checks(tags=["django_outbox"]) if m.id]
    assert message.id == "django_outbox.W003"
    assert "USE_TZ = True" in message.hint and "loc=UTC" in message.hint


def test_valid_alternatives_pass(settings):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = "a:9092, b:9093"
    settings.OUTBOX_DATABASES = "default,other"
    settings.OUTBOX_KAFKA_PRODUCER = {"acks": "all", "compression_type": "gzip"}
    settings.OUTBOX_DEFAULT_TOPIC = None
    settings.OUTBOX_STRICT_ORDER = ["chat.message.created"]
    assert outbox_ids() == set()


def test_an_unserved_outbox_database_names_it(settings):
    settings.OUTBOX_DATABASE = "other"
    settings.OUTBOX_DATABASES = ["default"]
    (message,) = [m for m in run_checks(tags=["django_outbox"]) if m.id == "django_outbox.E012"]
    assert "'other'" in message.msg and "OUTBOX_DATABASES" in message.hint


def test_settings_are_read_at_access_time(settings):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = "a:1, b:2"
    assert outbox_settings.kafka_bootstrap_servers == ["a:1", "b:2"]
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = ["c:3"]
    assert outbox_settings.kafka_bootstrap_servers == ["c:3"]
    settings.OUTBOX_DATABASES = "default, other"
    assert outbox_settings.databases == ["default", "other"]
    del settings.OUTBOX_DATABASES
    settings.OUTBOX_DATABASE = "other"
    assert outbox_settings.databases == ["other"]


def test_topic_for_prefers_the_map(settings):
    settings.OUTBOX_TOPICS = {"a.b": "special"}
    settings.OUTBOX_DEFAULT_TOPIC = "general"
    assert outbox_settings.topic_for("a.b") == "special"
    assert outbox_settings.topic_for("c.d") == "general"
    settings.OUTBOX_DEFAULT_TOPIC = None
    assert outbox_settings.topic_for("c.d") is None


def test_admin_without_staticfiles_is_a_warning(settings):
    settings.INSTALLED_APPS = [
        a for a in settings.INSTALLED_APPS if a != "django.contrib.staticfiles"
    ]
    [message] = [m for m in run_checks(tags=["django_outbox"]) if m.id == "django_outbox.W040"]
    assert "django_outbox/admin.css" in message.msg and "staticfiles" in message.hint


def test_a_handler_annotated_against_its_kind_is_a_warning():
    from django_outbox.envelope import Event
    from django_outbox.registry import registry

    def many(events: list[Event]) -> None:
        pass

    def one(event: Event) -> None:
        pass

    def fine(events: list[Event]) -> None:
        pass

    registry.register("check.many", many)
    registry.register("check.one", one, batch=True)
    registry.register("check.fine", fine, batch=True)
    try:
        messages = {
            m.id: m for m in run_checks() if m.id in ("django_outbox.W060", "django_outbox.W061")
        }
    finally:
        for event_type in ("check.many", "check.one", "check.fine"):
            registry.unregister(event_type)
    assert set(messages) == {"django_outbox.W060", "django_outbox.W061"}
    assert "check.one" in messages["django_outbox.W060"].msg
    assert "drop batch=True" in messages["django_outbox.W060"].hint
    assert "check.many" in messages["django_outbox.W061"].msg
    assert "add batch=True" in messages["django_outbox.W061"].hint


@pytest.mark.parametrize(
    ("brokers", "replication", "warned"), [(3, 1, True), (3, 3, False), (1, 1, False)]
)
def test_single_copy_topic_on_a_cluster_is_a_deploy_warning(
    monkeypatch, settings, brokers, replication, warned
):
    from django_outbox import kafka

    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_DEFAULT_TOPIC = "orders"
    admin = type("Admin", (), {"close": lambda self: None})()
    monkeypatch.setattr(kafka, "admin_client", lambda timeout: admin)
    monkeypatch.setattr(kafka, "cluster_brokers", lambda admin: brokers)
    monkeypatch.setattr(
        kafka, "describe_topics", lambda admin, names: [kafka.TopicInfo("orders", 3, replication)]
    )
    assert "django_outbox.W050" not in outbox_ids()  # a plain check never asks Kafka
    deploy = {m.id: m for m in run_checks(tags=["django_outbox"], include_deployment_checks=True)}
    assert ("django_outbox.W050" in deploy) is warned
    if warned:
        assert (
            "topic orders has replication factor 1 on a cluster of 3"
            in deploy["django_outbox.W050"].msg
        )


def test_the_deploy_check_is_silent_when_no_broker_answers(monkeypatch, settings):
    from django_outbox import kafka

    def unreachable(timeout: float) -> None:
        assert timeout <= 2.0  # `check --deploy` must not hang on a dead cluster
        raise kafka.KafkaTimeoutError("no broker")

    monkeypatch.setattr(kafka, "admin_client", unreachable)
    messages = run_checks(tags=["django_outbox"], include_deployment_checks=True)
    assert "django_outbox.W050" not in {m.id for m in messages}
