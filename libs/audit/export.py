"""The log as JSON lines: what ``lantau audit export`` writes and ``verify --file`` reads.

One line per log sequence, in order, so an export names every sequence the store held:
``{"log_seq": N, "entry": {...}}`` for an audit entry, ``{"log_seq": N, "raw": base64}``
for bytes that are not one, ``{"log_seq": N, "missing": reason}`` for a sequence the
store did not return.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator

import msgspec

from libs.audit.trail import LogItem, decode_item
from proto.audit import AuditEntry
from proto.errors import ErrorCode, LantauError


class ExportLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    log_seq: int
    entry: AuditEntry | None = None
    raw: str | None = None
    missing: str | None = None


class _ReadLine(msgspec.Struct, frozen=True, kw_only=True):
    """A line as read back: the entry is decoded on its own, so that an entry edited
    into nonsense is a bad entry at its log sequence, not an unreadable file."""

    log_seq: int
    entry: msgspec.Raw = msgspec.Raw(b"")
    raw: str | None = None
    missing: str | None = None


_line_decoder = msgspec.json.Decoder(_ReadLine)
# msgspec also lets through RecursionError (JSON nested too deeply) and UnicodeEncodeError
# (a str holding lone surrogates).
_UNREADABLE = (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeError)
_entry_decoder = msgspec.json.Decoder(AuditEntry)


def line_of(item: LogItem, raw: bytes | None = None) -> str:
    """The export line of one log sequence (``raw``: its bytes, when not an entry)."""
    if item.entry is not None:
        line = ExportLine(log_seq=item.log_seq, entry=item.entry)
    elif raw is not None:
        line = ExportLine(log_seq=item.log_seq, raw=base64.b64encode(raw).decode())
    else:
        line = ExportLine(log_seq=item.log_seq, missing=item.problem or "missing")
    return msgspec.json.encode(line).decode()


def from_lines(lines: Iterable[str]) -> Iterator[LogItem]:
    """Read an export back. A line that is not even an export line becomes a bad entry at
    the log sequence after the previous line's; sequences must go up."""
    previous = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = _line_decoder.decode(text)
        except _UNREADABLE as e:
            previous += 1
            yield LogItem(previous, None, f"line {number} of the export is unreadable ({e})")
            continue
        if line.log_seq <= previous:
            raise LantauError(
                ErrorCode.AUDIT_EXPORT_INVALID,
                f"line {number}: log seq {line.log_seq} after {previous}: not an export in order",
            )
        previous = line.log_seq
        if len(line.entry):
            try:
                yield LogItem(line.log_seq, _entry_decoder.decode(line.entry))
            except _UNREADABLE as e:
                yield LogItem(line.log_seq, None, f"not an audit entry ({e})")
        elif line.raw is not None:
            try:
                raw = base64.b64decode(line.raw, validate=True)
            except (binascii.Error, ValueError):
                yield LogItem(line.log_seq, None, "not an audit entry (raw bytes not base64)")
                continue
            yield decode_item(line.log_seq, raw)
        else:
            yield LogItem(line.log_seq, None, line.missing or "missing from the store")
