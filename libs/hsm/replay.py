"""The hsm-node's replay record: request id -> what was signed for it, and the signature.

The same request asking again (a redelivery, a retry after NATS restarted, a second
signer replica) gets the stored signature without the HSM being asked again; the same
id for other content is refused. The record is durable (SQLite, fsync'd commit) before
a signature leaves the node; concurrent signatures share one commit. Entries live until
their order's deadline has passed (plus a margin): later the request is refused as
stale anyway.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import NamedTuple

import msgspec

from proto.errors import ErrorCode, LantauError

_signatures = msgspec.msgpack.Decoder(list[bytes])
_signatures_out = msgspec.msgpack.Encoder()
# Kept past the deadline so a clock slightly behind the signer's still finds the entry.
KEEP_AFTER_DEADLINE_MS = 10 * 60_000


class Signed(NamedTuple):
    content: str  # the authorization that allowed it (its statement hash)
    signatures: list[bytes]


def replay(previous: Signed | None, request_id: str, content: str) -> list[bytes] | None:
    """The stored signature for this exact request, None if it was never signed here;
    refuses a request id reused for different content."""
    if previous is None:
        return None
    if previous.content != content:
        raise LantauError(
            ErrorCode.REQUEST_ID_CONFLICT,
            f"request {request_id} was signed on this node for different content",
        )
    return previous.signatures


class ReplayLog:
    def __init__(self, path: Path | None) -> None:
        """``path`` None: kept in memory (an in-process token whose caller keeps state)."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        where = str(path) if path is not None else ":memory:"
        self._db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=full")
        self._db.execute(
            "create table if not exists signed (request_id text primary key, content text,"
            " signature blob, keep_until integer)"
        )
        self._seen: dict[str, Signed] = {
            rid: Signed(content, _signatures.decode(blob))
            for rid, content, blob in self._db.execute(
                "select request_id, content, signature from signed"
            )
        }
        self._lock = threading.Lock()
        self._queue: list[tuple[str, Signed, int, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, request_id: str) -> Signed | None:
        return self._seen.get(request_id)

    async def record(self, request_id: str, signed: Signed, deadline_ms: int) -> None:
        """Return once the entry is durable; concurrent callers share one commit."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((request_id, signed, deadline_ms + KEEP_AFTER_DEADLINE_MS, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._flush())
        await done
        self._seen[request_id] = signed

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await asyncio.to_thread(self._commit, batch)
            except Exception as e:  # the disk refused: none of these may leave the node
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(e)
                continue
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)

    def _commit(self, batch: list[tuple[str, Signed, int, asyncio.Future[None]]]) -> None:
        with self._lock:
            self._db.execute("begin")
            self._db.executemany(
                "insert or ignore into signed values (?, ?, ?, ?)",
                [
                    (rid, s.content, _signatures_out.encode(s.signatures), keep)
                    for rid, s, keep, _ in batch
                ],
            )
            self._db.execute("commit")

    def prune(self, now_ms: int) -> int:
        """Forget entries whose orders can no longer be signed; returns how many."""
        with self._lock:
            gone = [
                rid
                for (rid,) in self._db.execute(
                    "select request_id from signed where keep_until < ?", (now_ms,)
                )
            ]
            self._db.execute("delete from signed where keep_until < ?", (now_ms,))
        for rid in gone:
            self._seen.pop(rid, None)
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()
