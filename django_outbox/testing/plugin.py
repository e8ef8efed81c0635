"""The pytest plugin (entry point ``pytest11``): the ``outbox_events`` fixture.

Loaded by pytest before Django is set up, so it imports the kit only inside the
fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django_outbox.testing.capture import Capture


@pytest.fixture
def outbox_events() -> Iterator[Capture]:
    """The events the test published and committed (``capture_events()``).

    Works in ordinary ``django_db`` tests (the test's transaction counts as
    committed) and in ``transaction=True`` ones (only real commits count)::

        def test_paying(outbox_events):
            pay(order)
            outbox_events.assert_published("order.paid", data={"order": order.pk})
    """
    from django_outbox.testing.capture import capture_events

    with capture_events() as capture:
        yield capture
