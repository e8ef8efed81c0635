"""bench/floor.py's relay floor claims as the relay does: with buckets on, as the owner
of every bucket (the relay alone on its database), and gives them back at the end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from django_outbox.models import OutboxMessage, claiming
from django_outbox.models.buckets import BUCKETS, RelayBucket, RelayMember

from .relay_support import make_rows

pytestmark = pytest.mark.django_db(transaction=True)


def _floor():
    path = Path(__file__).resolve().parent.parent / "bench" / "floor.py"
    spec = importlib.util.spec_from_file_location("bench_floor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("sharing", [True, False], ids=["buckets", "no buckets"])
def test_the_relay_floor_claims_as_the_relay_does(vendor, settings, monkeypatch, sharing):
    settings.OUTBOX_RELAY_BUCKETS = sharing
    made = make_rows(30, "t", keys=["a", "b", "c", ""])
    owners = []
    real = claiming.claim

    def spy(*args, **kwargs):
        owners.append(kwargs.get("owner"))
        return real(*args, **kwargs)

    monkeypatch.setattr(claiming, "claim", spy)
    done, seconds = _floor().relay_floor("default", 7, 30)
    assert done == len(made) and seconds > 0
    assert OutboxMessage.objects.published().count() == len(made)
    if sharing and vendor != "sqlite":
        assert owners and all(o is not None and o.whole for o in owners)
        assert RelayBucket.objects.count() == BUCKETS
    else:
        assert owners and all(o is None for o in owners)
    # nothing left held: the buckets are given back, the membership gone
    assert not RelayBucket.objects.filter(owner__isnull=False).exists()
    assert not RelayMember.objects.exists()
