"""Capped exponential backoff with jitter (pure logic)."""

from __future__ import annotations

import random

import pytest

from django_outbox.backoff import backoff_delay, retry_delay


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_doubles_from_the_base_without_jitter_draw():
    delays = [backoff_delay(n, 1.0, 3600, rand=Fixed(0.0)) for n in range(1, 7)]
    assert delays == [1, 2, 4, 8, 16, 32]


def test_capped():
    assert backoff_delay(20, 1.0, 60.0, rand=Fixed(0.0)) == 60.0
    assert backoff_delay(10_000, 1.0, 60.0, rand=Fixed(0.0)) == 60.0  # no overflow


def test_jitter_takes_up_to_half_off():
    assert backoff_delay(3, 1.0, 3600, rand=Fixed(0.999999)) == pytest.approx(2.0, abs=1e-5)
    draws = [backoff_delay(5, 1.0, 3600) for _ in range(500)]
    assert all(8.0 <= d <= 16.0 for d in draws)
    assert len(set(draws)) > 400  # spread, not synchronised


def test_no_jitter():
    assert backoff_delay(4, 0.5, 3600, jitter=0) == 4.0


def test_attempt_below_one_counts_as_the_first():
    assert backoff_delay(0, 2.0, 3600, rand=Fixed(0.0)) == 2.0


@pytest.mark.parametrize("base, cap, jitter", [(0, 1, 0.5), (1, 0, 0.5), (1, 1, 1.5)])
def test_rejects_nonsense(base, cap, jitter):
    with pytest.raises(ValueError):
        backoff_delay(1, base, cap, jitter=jitter)


def test_retry_delay_reads_the_settings_at_call_time(settings):
    settings.OUTBOX_RETRY_BACKOFF_BASE = 10.0
    settings.OUTBOX_RETRY_BACKOFF_MAX = 15.0
    assert 5.0 <= retry_delay(1) <= 10.0
    assert 7.5 <= retry_delay(9) <= 15.0
