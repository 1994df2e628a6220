"""Audit entries as JSON lines: what ``lantau audit export`` writes and ``verify --file`` reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

from proto.audit import AuditEntry

_decoder = msgspec.json.Decoder(AuditEntry)


def to_lines(entries: Iterable[AuditEntry]) -> Iterator[str]:
    for entry in entries:
        yield msgspec.json.encode(entry).decode()


def from_lines(lines: Iterable[str]) -> Iterator[AuditEntry]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield _decoder.decode(line)
            except msgspec.ValidationError as e:
                raise ValueError(f"line {number}: not an audit entry ({e})") from None
            except msgspec.DecodeError as e:
                raise ValueError(f"line {number}: not JSON ({e})") from None
            except RecursionError:
                raise ValueError(f"line {number}: JSON nested too deeply") from None
            except UnicodeEncodeError:
                # A str holding lone surrogates (msgspec reads text as UTF-8).
                raise ValueError(f"line {number}: not UTF-8 text") from None
