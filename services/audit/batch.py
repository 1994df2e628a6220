"""Facts waiting to be recorded, and the next batch: pure.

Each source stream is recorded in its own order, every message exactly once: a batch
takes, per stream, the run of messages that continues the stream's cursor (facts, and
gaps for messages that are gone), and merges the streams in the order their messages
arrived. A message delivered ahead of one still missing waits for it; a hole that lasts
is filled by reading the stream directly (``holes``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from proto.audit import FactGap


@dataclass
class Waiting:
    """One fact (first == last, with its bytes) or one gap, waiting to be recorded."""

    stream: str
    first: int
    last: int
    arrival: int
    since: float
    data: bytes | None = None
    reason: Literal["expired", "deleted"] = "deleted"
    # Opaque to this module: whoever waits for the fact to be recorded (futures).
    waiters: list[object] = field(default_factory=list)

    @property
    def is_gap(self) -> bool:
        return self.data is None

    def gap(self) -> FactGap:
        return FactGap(stream=self.stream, first=self.first, last=self.last, reason=self.reason)


@dataclass
class Pending:
    by_stream: dict[str, dict[int, Waiting]] = field(default_factory=dict)
    _arrivals: int = 0

    def __len__(self) -> int:
        return sum(len(items) for items in self.by_stream.values())

    def add_fact(self, stream: str, seq: int, data: bytes, now: float) -> Waiting:
        """Remember a delivered fact (a second delivery of it returns the first)."""
        items = self.by_stream.setdefault(stream, {})
        known = items.get(seq)
        if known is not None and not known.is_gap:
            return known
        self._arrivals += 1
        w = Waiting(stream, seq, seq, self._arrivals, now, data)
        items[seq] = w
        return w

    def add_gap(
        self, stream: str, first: int, last: int, reason: Literal["expired", "deleted"], now: float
    ) -> None:
        self._arrivals += 1
        self.by_stream.setdefault(stream, {})[first] = Waiting(
            stream, first, last, self._arrivals, now, None, reason
        )

    def drop_recorded(self, cursors: dict[str, int]) -> list[Waiting]:
        """Forget what the log already covers (recorded by us or by another replica)."""
        done = []
        for stream, items in self.by_stream.items():
            at = cursors.get(stream, 0)
            for seq in [s for s, w in items.items() if w.last <= at]:
                done.append(items.pop(seq))
        return done

    def take(self, cursors: dict[str, int], max_facts: int) -> list[Waiting]:
        """The next batch, without removing it: per stream the run continuing its cursor,
        merged by arrival; at most ``max_facts`` facts (gaps come along for free)."""
        runs = [list(self._run(stream, cursors.get(stream, 0))) for stream in self.by_stream]
        batch, facts = [], 0
        for w in heapq.merge(*runs, key=lambda w: w.arrival):
            if not w.is_gap:
                if facts == max_facts:
                    break
                facts += 1
            batch.append(w)
        # A stream's run must stay contiguous: keep each stream's prefix only.
        return _prefixes(batch, cursors)

    def _run(self, stream: str, at: int) -> Iterator[Waiting]:
        items = self.by_stream.get(stream, {})
        while (w := items.get(at + 1)) is not None:
            yield w
            at = w.last

    def holes(self, cursors: dict[str, int]) -> dict[str, tuple[int, int, float]]:
        """Per stream with waiting items but none continuing its cursor: the missing
        sequences (first, last) and since when the hole has been known."""
        out = {}
        for stream, items in self.by_stream.items():
            if not items:
                continue
            at = cursors.get(stream, 0)
            if at + 1 in items:
                continue
            ahead = [w for w in items.values() if w.first > at]
            if not ahead:
                continue
            nearest = min(ahead, key=lambda w: w.first)
            out[stream] = (at + 1, nearest.first - 1, min(w.since for w in ahead))
        return out


def _prefixes(batch: list[Waiting], cursors: dict[str, int]) -> list[Waiting]:
    """Drop, per stream, anything after the first break in the run (a limit cut it)."""
    at = dict(cursors)
    kept = []
    for w in batch:
        if w.first != at.get(w.stream, 0) + 1:
            continue
        at[w.stream] = w.last
        kept.append(w)
    return kept
