"""What the outbox commands share (django_outbox/management/worker.py)."""

from __future__ import annotations

import argparse
import io
import logging

import pytest
from django.core.management import CommandError, call_command

from django_outbox.management.worker import (
    command_logging,
    database_aliases,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


@pytest.mark.parametrize(
    "parse, text, value",
    [
        (positive_int, "3", 3),
        (non_negative_int, "0", 0),
        (positive_float, "0.5", 0.5),
        (non_negative_float, "0", 0.0),
    ],
)
def test_validators_accept(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (positive_int, "0", "must be at least 1, not 0"),
        (positive_int, "1.5", "'1.5' is not a number"),
        (non_negative_int, "-1", "must be non-negative, not -1"),
        (positive_float, "0", "must be positive, not 0"),
        (non_negative_float, "nope", "'nope' is not a number"),
    ],
)
def test_validators_refuse_with_the_rule(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_worker_commands_reject_bad_numbers_before_starting():
    with pytest.raises(CommandError, match="--interval: must be non-negative"):
        call_command("outbox_relay", "--interval", "-1")
    with pytest.raises(CommandError, match="--poll-timeout: must be positive"):
        call_command("outbox_consume", "--poll-timeout", "0", "--topic", "t")


def test_database_aliases(settings):
    assert database_aliases({"databases": None}) == ["default"]
    settings.OUTBOX_DATABASES = ["default", "other"]
    assert database_aliases({}) == ["default", "other"]
    assert database_aliases({"databases": ["other"]}) == ["other"]
    with pytest.raises(CommandError, match=r"unknown database alias\(es\) \['nope'\]"):
        database_aliases({"databases": ["nope"]})


def test_command_logging_sets_the_level_and_restores_it():
    package = logging.getLogger("django_outbox")
    before = package.level
    out = io.StringIO()
    with command_logging(out, 0):  # type: ignore[arg-type]
        assert package.level == logging.WARNING
        logging.getLogger("django_outbox.relay.loop").warning("careful")
        logging.getLogger("django_outbox.relay.loop").info("chatter")
    assert package.level == before and not package.handlers
    assert "careful" in out.getvalue() and "chatter" not in out.getvalue()
