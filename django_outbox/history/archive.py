"""The archive of pruned rows: JSON Lines, gzip-compressed when the file name ends in ``.gz``.

One row a line, every column of the legacy table and the database alias it came
from, as ASCII JSON (``ensure_ascii``: any string, a NUL, a lone surrogate or a line
break in a payload, round-trips). ``Archive.keep`` appends a chunk of rows and
flushes it to the disk (``fsync``) before ``outbox_prune`` deletes them; a gzip file
gets one member per run (readers see one stream). ``read_archive`` checks every line
before anything is sent and names the first bad one (``ArchiveError``).
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.utils.dateparse import parse_datetime

from django_outbox.models import OutboxMessage, Status

#: The format of a line, in its key ``v``.
VERSION = 1
_TEXT = ("alias", "event_type", "topic", "message_key", "payload", "status")
_TIMES = ("next_retry_at", "published_at", "consumed_at", "created_at", "updated_at")


class ArchiveError(Exception):
    """An archive that cannot be read whole: the message names the file and the line."""


@dataclass(frozen=True)
class ArchivedRow:
    """An outbox row as the archive keeps it; ``line`` is its line number (from 1)."""

    line: int
    id: int
    alias: str
    event_type: str
    topic: str
    message_key: str
    payload: str
    status: str
    retry_count: int = 0
    max_retry: int = 20
    last_error: str | None = None
    next_retry_at: datetime.datetime | None = None
    published_at: datetime.datetime | None = None
    consumed_at: datetime.datetime | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


def encode_row(row: OutboxMessage, alias: str) -> str:
    """The archive's line for ``row`` of database ``alias`` (no line break in it)."""
    document: dict[str, Any] = {"v": VERSION, "id": row.pk, "alias": alias}
    for name in _TEXT[1:]:
        document[name] = getattr(row, name)
    document["retry_count"] = row.retry_count
    document["max_retry"] = row.max_retry
    document["last_error"] = row.last_error
    for name in _TIMES:
        value = getattr(row, name)
        document[name] = None if value is None else value.isoformat()
    return json.dumps(document, ensure_ascii=True, separators=(",", ":"))


def _field_error(document: dict[str, Any]) -> str | None:
    if document.get("v") != VERSION:
        return f"format version {document.get('v')!r}, expected {VERSION}"
    if not isinstance(document.get("id"), int) or isinstance(document.get("id"), bool):
        return "no integer 'id'"
    for name in _TEXT:
        if not isinstance(document.get(name), str):
            return f"no text {name!r}"
    if document["status"] not in Status.values:
        return f"unknown status {document['status']!r}"
    for name in ("retry_count", "max_retry"):
        if not isinstance(document.get(name, 0), int):
            return f"{name!r} is not an integer"
    if not isinstance(document.get("last_error"), (str, type(None))):
        return "'last_error' is not text"
    for name in _TIMES:
        value = document.get(name)
        if value is not None and (not isinstance(value, str) or parse_datetime(value) is None):
            return f"{name!r} is not an ISO 8601 time: {value!r}"
    return None


def decode_line(text: str, line: int) -> ArchivedRow:
    """The row of one line; ``ArchiveError`` naming ``line`` when it is not one."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ArchiveError(f"line {line}: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ArchiveError(f"line {line}: not a JSON object")
    problem = _field_error(document)
    if problem is not None:
        raise ArchiveError(f"line {line}: {problem}")
    times = {
        name: None if document.get(name) is None else parse_datetime(document[name])
        for name in _TIMES
    }
    fields: dict[str, Any] = {name: document[name] for name in _TEXT}
    fields.update(times)
    return ArchivedRow(
        line=line,
        id=document["id"],
        retry_count=document.get("retry_count", 0),
        max_retry=document.get("max_retry", 20),
        last_error=document.get("last_error"),
        **fields,
    )


def _is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def read_archive(path: str | os.PathLike[str]) -> list[ArchivedRow]:
    """Every row of the archive at ``path``, checked; ``ArchiveError`` on the first bad line.

    An empty line is an error too: the writer never leaves one.
    """
    path = Path(path)
    rows: list[ArchivedRow] = []
    line = 0
    try:
        opened: Any = gzip.GzipFile(path, "rb") if _is_gzip(path) else open(path, "rb")
        with opened as source:
            for line, raw in enumerate(source, start=1):
                try:
                    text = raw.decode("ascii").rstrip("\n")
                except UnicodeDecodeError:
                    raise ArchiveError(f"{path}: line {line}: not ASCII JSON") from None
                rows.append(decode_line(text, line))
    except ArchiveError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ArchiveError(f"{path}: {exc}; nothing was sent") from None
    except (OSError, EOFError) as exc:
        raise ArchiveError(
            f"{path}: cannot be read after line {line} ({exc}); nothing was sent"
        ) from None
    return rows


class Archive:
    """An archive file open for appending: ``keep(rows, alias)`` writes and syncs them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open(self.path, "ab")
        self._gzip = gzip.GzipFile(fileobj=self._file, mode="ab") if _is_gzip(self.path) else None
        self.written = 0

    def keep(self, rows: Iterable[OutboxMessage], alias: str) -> None:
        """Append ``rows`` and make them durable; raises (and the caller deletes nothing)."""
        data = "".join(encode_row(row, alias) + "\n" for row in rows).encode("ascii")
        target: Any = self._gzip if self._gzip is not None else self._file
        target.write(data)
        target.flush()  # gzip: a sync flush, the bytes so far readable
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += data.count(b"\n")

    def close(self) -> None:
        if self._gzip is not None:
            self._gzip.close()
        self._file.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
