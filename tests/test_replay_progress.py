"""The progress line of ``outbox_replay`` (pure: no database, no broker)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from django_outbox.history.progress import WIDTH, progress_line


def test_a_run_part_way_shows_its_bar_share_rate_and_time_left():
    line = progress_line(7, sent=3, matched=10, sent_here=2, elapsed=1.0)
    assert line == "replay run 7: [######--------------]  30% 3/10 sent, 2.0/s, about 4 s left"


def test_a_finished_run_has_a_full_bar_and_no_time_left():
    line = progress_line(1, sent=10, matched=10, sent_here=10, elapsed=2.0)
    assert line == f"replay run 1: [{'#' * WIDTH}] 100% 10/10 sent, 5.0/s"


def test_nothing_sent_here_yet_gives_no_rate():
    assert progress_line(2, sent=5, matched=10, sent_here=0, elapsed=0.0).endswith("5/10 sent")


@given(
    sent=st.integers(min_value=0, max_value=10**12),
    matched=st.integers(min_value=0, max_value=10**12),
    sent_here=st.integers(min_value=0, max_value=10**12),
    elapsed=st.floats(min_value=0, max_value=1e9, allow_nan=False),
)
def test_any_counts_give_one_line_with_a_bar_of_its_width(sent, matched, sent_here, elapsed):
    line = progress_line(3, sent, matched, sent_here, elapsed)
    assert "\n" not in line and f"{sent}/{matched} sent" in line
    bar = line[line.index("[") + 1 : line.index("]")]
    assert len(bar) == WIDTH and set(bar) <= {"#", "-"}
    assert bar == "#" * bar.count("#") + "-" * bar.count("-")
