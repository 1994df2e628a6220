"""Where hsm-nodes keep what every node of a domain shares about sealed keys: the sealed
blobs (``lantau_sealed``, written once) and each stateful key's one-time index ledger
(``lantau_hss_ledger``, changed only by compare-and-set). JetStream KV for the nodes;
in memory for tests of the node's logic.
"""

from __future__ import annotations

from typing import Protocol

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs.bus import kv
from libs.keytypes.lms_state import IndexState
from proto import codec
from proto.errors import ErrorCode, LantauError
from proto.keys import SealedKey
from proto.subjects import HSS_LEDGER_BUCKET, SEALED_BUCKET


class SealedStore(Protocol):
    async def get(self, key_id: str) -> SealedKey | None: ...

    async def create(self, sealed: SealedKey) -> bool:
        """Store a new blob; False (nothing written) if the key id already has one."""
        ...


class IndexLedger(Protocol):
    async def read(self, key_id: str) -> tuple[IndexState | None, int]:
        """The ledger and its revision (0 when there is none)."""
        ...

    async def write(self, state: IndexState, revision: int) -> bool:
        """Compare-and-set (revision 0: create); False if it changed since ``revision``."""
        ...


_STATE = msgspec.msgpack.Decoder(IndexState)


def decode_state(data: bytes) -> IndexState:
    try:
        return _STATE.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise LantauError(
            ErrorCode.MALFORMED_MESSAGE, "an index ledger entry is unreadable"
        ) from None


def encode_state(state: IndexState) -> bytes:
    return msgspec.msgpack.encode(state)


class _Lazy:
    """Opens a bucket on first use: hsm-nodes start before anything provisions the bus."""

    def __init__(self, js: JetStreamContext, name: str) -> None:
        self._js, self._name = js, name
        self._bucket: KeyValue | None = None

    async def bucket(self) -> KeyValue:
        if self._bucket is None:
            self._bucket = await self._js.key_value(self._name)
        return self._bucket


class KvSealedStore(_Lazy):
    def __init__(self, js: JetStreamContext) -> None:
        super().__init__(js, SEALED_BUCKET)

    async def get(self, key_id: str) -> SealedKey | None:
        value, _ = await kv.read(await self.bucket(), key_id)
        return None if value is None else codec.SEALED_KEY.decode(value)

    async def create(self, sealed: SealedKey) -> bool:
        written = await kv.write(await self.bucket(), sealed.key_id, codec.encode(sealed), 0)
        return written is not None


class KvIndexLedger(_Lazy):
    def __init__(self, js: JetStreamContext) -> None:
        super().__init__(js, HSS_LEDGER_BUCKET)

    async def read(self, key_id: str) -> tuple[IndexState | None, int]:
        value, revision = await kv.read(await self.bucket(), key_id)
        return (None, 0) if value is None else (decode_state(value), revision)

    async def write(self, state: IndexState, revision: int) -> bool:
        bucket = await self.bucket()
        return await kv.write(bucket, state.key_id, encode_state(state), revision) is not None


class MemorySealedStore:
    def __init__(self) -> None:
        self.blobs: dict[str, SealedKey] = {}

    async def get(self, key_id: str) -> SealedKey | None:
        return self.blobs.get(key_id)

    async def create(self, sealed: SealedKey) -> bool:
        if sealed.key_id in self.blobs:
            return False
        self.blobs[sealed.key_id] = sealed
        return True


class MemoryIndexLedger:
    def __init__(self) -> None:
        self.states: dict[str, tuple[IndexState, int]] = {}

    async def read(self, key_id: str) -> tuple[IndexState | None, int]:
        state, revision = self.states.get(key_id, (None, 0))
        return state, revision

    async def write(self, state: IndexState, revision: int) -> bool:
        _, current = self.states.get(state.key_id, (None, 0))
        if current != revision:
            return False
        self.states[state.key_id] = (state, current + 1)
        return True
