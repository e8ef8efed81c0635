from __future__ import annotations

import pytest

pytest_plugins = ["tests.kafka_fixtures"]


@pytest.fixture
def vendor() -> str:
    from django.db import connection

    return connection.vendor
