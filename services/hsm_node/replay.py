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
import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import NamedTuple

from proto.errors import ErrorCode, LantauError
from proto.hsm import HsmSign

# Kept past the deadline so a clock slightly behind the signer's still finds the entry.
KEEP_AFTER_DEADLINE_MS = 10 * 60_000


def sign_content(command: HsmSign) -> str:
    """What a request asked this node to sign: the key and the exact bytes."""
    digest = hashlib.sha256(b"lantau/hsm-sign/v1\n")
    for part in (command.key_id.encode(), command.curve.encode(), command.data):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()


class Signed(NamedTuple):
    content: str  # hash of what was asked: key, payload (the authorization, once signed)
    signature: bytes


def replay(previous: Signed | None, request_id: str, content: str) -> bytes | None:
    """The stored signature for this exact request, None if it was never signed here;
    refuses a request id reused for different content."""
    if previous is None:
        return None
    if previous.content != content:
        raise LantauError(
            ErrorCode.REQUEST_ID_CONFLICT,
            f"request {request_id} was signed on this node for different content",
        )
    return previous.signature


class ReplayLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=full")
        self._db.execute(
            "create table if not exists signed (request_id text primary key, content text,"
            " signature blob, keep_until integer)"
        )
        self._seen: dict[str, Signed] = {
            rid: Signed(content, bytes(sig))
            for rid, content, sig in self._db.execute(
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
                [(rid, s.content, s.signature, keep) for rid, s, keep, _ in batch],
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
