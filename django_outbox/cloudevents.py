"""The CloudEvents Kafka protocol binding, binary content mode (``OUTBOX_CLOUDEVENTS = True``).

Each relayed record then also carries the CloudEvents attributes as headers: ``ce_id``
(the envelope's ``event_id``), ``ce_type`` (``event_type``), ``ce_source``
(``OUTBOX_CLOUDEVENTS_SOURCE``, by default ``/django-outbox/<database alias>``),
``ce_specversion`` (``1.0``), ``ce_time`` (``occurred_at``, RFC 3339) and
``content-type: application/json``. The value stays the envelope: a CloudEvents reader
gets it as ``data``, this app's consumer reads it as before. Envelope headers with the
same names are dropped from the record (ours win); any other ``ce_<name>`` header the
publisher set becomes that attribute (``ce_subject``, an extension).
"""

from __future__ import annotations

import re

from django_outbox.conf import outbox_settings
from django_outbox.envelope import _format_time, _parse_time

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
#: Header names this module sets (compared in lower case, as CloudEvents readers do).
HEADERS = frozenset({"ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type"})
#: RFC 3339 ``date-time``; what already matches is passed on as written.
_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)", re.ASCII
)
#: The characters of a URI reference (RFC 3986), for the check of OUTBOX_CLOUDEVENTS_SOURCE.
_URI_REFERENCE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


def source_problem(value: object) -> str | None:
    """Why ``value`` cannot be ``ce_source`` (a non-empty URI reference), or None."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, not {value!r}"
    if not _URI_REFERENCE.fullmatch(value):
        return (
            f"{value!r} is not a URI reference (RFC 3986: no spaces, non-ASCII "
            "characters percent-encoded)"
        )
    return None


def rfc3339(value: str) -> str | None:
    """``occurred_at`` as an RFC 3339 time, or None when it is not a time with a zone."""
    if _RFC3339.fullmatch(value):
        return value
    try:
        return _format_time(_parse_time(value))
    except (TypeError, ValueError):
        return None


def binary_headers(
    headers: list[tuple[str, bytes]],
    *,
    event_id: str,
    event_type: str,
    occurred_at: str,
    alias: str,
) -> list[tuple[str, bytes]]:
    """``headers`` with the binary-mode attributes, when ``OUTBOX_CLOUDEVENTS`` is on.

    A payload that is no envelope (no event id) gets none: it is no event of any kind,
    and the consumer records it as malformed.
    """
    if not event_id or not outbox_settings.cloudevents:
        return headers
    source = outbox_settings.cloudevents_source or f"/django-outbox/{alias}"
    kept = [(name, value) for name, value in headers if name.lower() not in HEADERS]
    kept += [
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", event_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", event_type.encode()),
    ]
    time = rfc3339(occurred_at)
    if time is not None:
        kept.append(("ce_time", time.encode()))
    kept.append(("content-type", CONTENT_TYPE.encode()))
    return kept
