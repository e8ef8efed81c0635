from __future__ import annotations

import pytest

from django_outbox import handler
from django_outbox.exceptions import HandlerAlreadyRegistered, UnknownEventType
from django_outbox.registry import HandlerRegistry, registry


@pytest.fixture
def local_registry():
    return HandlerRegistry()


def test_decorator_registers_and_returns_the_function(local_registry):
    @handler("order.paid", registry=local_registry)
    def on_paid(event):
        return "done"

    assert local_registry.get("order.paid") is on_paid
    assert "order.paid" in local_registry
    assert list(local_registry) == ["order.paid"]
    assert len(local_registry) == 1


def test_second_handler_for_a_type_is_refused_with_both_names(local_registry):
    @handler("order.paid", registry=local_registry)
    def first(event):
        pass

    def second(event):
        pass

    with pytest.raises(HandlerAlreadyRegistered, match="first.*second"):
        local_registry.register("order.paid", second)
    assert local_registry.get("order.paid") is first


def test_registering_the_same_function_again_is_harmless(local_registry):
    def on_paid(event):
        pass

    local_registry.register("order.paid", on_paid)
    local_registry.register("order.paid", on_paid)
    assert local_registry.event_types() == ["order.paid"]


def test_unknown_event_type_raises(local_registry):
    with pytest.raises(UnknownEventType, match="nothing.here"):
        local_registry.get("nothing.here")


def test_unregister(local_registry):
    local_registry.register("a", lambda event: None)
    local_registry.unregister("a")
    local_registry.unregister("a")
    assert "a" not in local_registry


@pytest.mark.parametrize("bad", ["", "x" * 65, None])
def test_bad_event_type_is_refused_at_decoration(bad):
    with pytest.raises(ValueError, match="event_type"):
        handler(bad)


def test_events_modules_of_installed_apps_are_discovered():
    from testproject.chat.events import persist_chat_history

    assert registry.get("chat.message.created") is persist_chat_history


def test_a_batch_handler_is_registered_as_one(local_registry):
    @handler("order.paid", batch=True, registry=local_registry)
    def on_paid(events):
        pass

    registration = local_registry.registration("order.paid")
    assert registration.func is on_paid and registration.batch
    assert local_registry.get("order.paid") is on_paid


def test_a_type_cannot_have_both_a_batch_and_a_per_event_handler(local_registry):
    @handler("order.paid", registry=local_registry)
    def one(event):
        pass

    def many(events):
        pass

    with pytest.raises(HandlerAlreadyRegistered, match="per-event handler.*one.*batch handler"):
        local_registry.register("order.paid", many, batch=True)
    assert not local_registry.registration("order.paid").batch


@pytest.mark.parametrize(
    ("func", "message"),
    [
        ("not callable", "must be callable"),
        (lambda: None, "one positional argument, a list of events"),
        (lambda events, extra: None, "one positional argument"),
    ],
)
def test_a_handler_the_consumer_cannot_call_is_refused(local_registry, func, message):
    with pytest.raises(TypeError, match=message):
        local_registry.register("order.paid", func, batch=True)
    assert "order.paid" not in local_registry


def test_an_async_handler_is_refused(local_registry):
    async def on_paid(event):
        pass

    with pytest.raises(TypeError, match="is async"):
        handler("order.paid", registry=local_registry)(on_paid)


def test_batch_must_be_a_boolean(local_registry):
    with pytest.raises(TypeError, match="batch must be True or False"):
        handler("order.paid", batch="yes", registry=local_registry)  # type: ignore[arg-type]
