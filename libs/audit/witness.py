"""Witness files: every checkpoint, one JSON line each, appended to sinks the bus cannot
rewrite. Pure: formatting, reading back and checking (the appending is the service's).

A witness file only grows: its checkpoints are signed by the trusted checkpoint key and
their tree sizes never go down (the same checkpoint may appear twice: a sink that came
back is given the newest checkpoint again). The verifier then checks the log against
them: the log must still hold every tree a witness saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from libs.audit import checkpoint as cp
from proto.audit import AuditCheckpoint
from proto.errors import ErrorCode, LantauError

_decoder = msgspec.json.Decoder(AuditCheckpoint)


@dataclass(frozen=True)
class Witnessed:
    """A checkpoint as found in a witness file (or a file an auditor saved)."""

    source: str
    line: int
    checkpoint: AuditCheckpoint

    @property
    def label(self) -> str:
        return f"{self.source} line {self.line}"


def line_of(checkpoint: AuditCheckpoint) -> bytes:
    """The bytes appended to a sink for one checkpoint."""
    return msgspec.json.encode(checkpoint) + b"\n"


def parse(text: str, source: str) -> list[Witnessed]:
    """Every checkpoint of a witness file. A last line without its newline is a write the
    sink never finished and is left out; any other bad line is a typed error naming it."""
    found = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)  # no newline after it
        try:
            found.append(Witnessed(source, number, _decoder.decode(line)))
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            if torn:
                break
            raise LantauError(
                ErrorCode.AUDIT_WITNESS_INVALID, f"{source} line {number}: not a checkpoint ({e})"
            ) from None
    return found


def check(witnessed: Iterable[Witnessed], trusted_keys: list[bytes]) -> list[Witnessed]:
    """The checkpoints in order, each signed by a trusted key and none smaller than the
    one before; a typed error naming the first line that is not."""
    out: list[Witnessed] = []
    for w in witnessed:
        c = w.checkpoint
        if not cp.verify(c, trusted_keys):
            raise LantauError(
                ErrorCode.AUDIT_WITNESS_INVALID,
                f"{w.label}: checkpoint of tree size {c.tree_size} is not signed by a "
                "trusted checkpoint key",
            )
        if out:
            before = out[-1].checkpoint
            if c.tree_size < before.tree_size:
                raise LantauError(
                    ErrorCode.AUDIT_WITNESS_INVALID,
                    f"{w.label}: checkpoint of tree size {c.tree_size} after one of tree size "
                    f"{before.tree_size} ({out[-1].label}): replayed or out of order",
                )
            if c.tree_size == before.tree_size and c.root != before.root:
                raise LantauError(
                    ErrorCode.AUDIT_WITNESS_INVALID,
                    f"{w.label}: two different roots for tree size {c.tree_size} "
                    f"(also {out[-1].label}): the log was forked",
                )
        out.append(w)
    return out
