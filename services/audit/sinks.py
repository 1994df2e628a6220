"""Witness sinks: append-only files on volumes the bus cannot rewrite.

Every checkpoint is appended to each sink (one JSON line, fsync'd). A sink that fails
is marked down (metric, log) and given the newest checkpoint again when it answers; the
trail is witnessed while at least one sink holds the newest checkpoint. Blocking file
calls run on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from libs import metrics
from libs.audit import witness
from proto.audit import AuditCheckpoint
from proto.errors import LantauError

log = logging.getLogger("lantau.audit")

# The newest line of a sink is read from its tail: a checkpoint line is about 1 KB.
TAIL_BYTES = 64 * 1024


@dataclass
class Sink:
    path: str
    up: bool = False
    # Tree size of the newest checkpoint this sink took (-1: none since start).
    holds: int = -1
    reason: str = "not tried yet"

    def _set(self, up: bool, reason: str = "") -> None:
        if up != self.up:
            if up:
                log.info("witness sink %s is available again", self.path)
            else:
                log.error("witness sink %s is unavailable: %s", self.path, reason)
        self.up, self.reason = up, reason
        metrics.AUDIT_WITNESS_UP.labels(self.path).set(1 if up else 0)


def _append(path: str, data: bytes) -> None:
    # O_APPEND: every write lands at the end, whoever else appends; never truncates.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - TAIL_BYTES))
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    if size > TAIL_BYTES:  # the first line read may be cut: drop it
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return text


class Sinks:
    def __init__(self, paths: list[str]) -> None:
        self.sinks = [Sink(p) for p in paths]
        self.newest: AuditCheckpoint | None = None

    @property
    def witnessed(self) -> bool:
        """True while a sink is up and holds the newest checkpoint (or none exists yet)."""
        need = self.newest.tree_size if self.newest is not None else -1
        return any(s.up and s.holds >= need for s in self.sinks)

    @property
    def up_count(self) -> int:
        return sum(s.up for s in self.sinks)

    async def write(self, checkpoint: AuditCheckpoint) -> None:
        """Append a checkpoint to every sink; a sink that fails is marked down."""
        self.newest = checkpoint
        line = witness.line_of(checkpoint)
        for sink in self.sinks:
            await self._write_one(sink, line, checkpoint.tree_size)

    async def _write_one(self, sink: Sink, line: bytes, tree_size: int) -> None:
        try:
            await asyncio.to_thread(_append, sink.path, line)
        except OSError as e:
            sink._set(False, f"cannot append: {e.strerror or e}")
            return
        sink.holds = tree_size
        sink._set(True)

    async def probe(self) -> None:
        """Try every sink; one that answers gets the newest checkpoint if it lacks it."""
        for sink in self.sinks:
            if self.newest is not None and sink.holds < self.newest.tree_size:
                await self._write_one(sink, witness.line_of(self.newest), self.newest.tree_size)
                continue
            try:
                await asyncio.to_thread(_append, sink.path, b"")
            except OSError as e:
                sink._set(False, f"cannot open for appending: {e.strerror or e}")
            else:
                sink._set(True)

    async def newest_lines(self) -> list[witness.Witnessed]:
        """The newest checkpoint each readable sink holds (unchecked)."""
        found = []
        for sink in self.sinks:
            try:
                text = await asyncio.to_thread(_tail, sink.path)
                lines = witness.parse(text, sink.path)
            except FileNotFoundError:
                continue
            except (OSError, LantauError) as e:
                log.error("witness sink %s cannot be read back: %s", sink.path, e)
                continue
            if lines:
                found.append(lines[-1])
        return found
