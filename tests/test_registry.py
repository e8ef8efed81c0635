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
