"""The audit service's state in the lantau_audit_state bucket: where the writer resumes
(so a restart does not re-read the whole log) and whether the trail is witnessed (every
signer reads it and takes no order while it is not)."""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs.audit import merkle
from libs.bus import kv
from proto import codec
from proto.audit import WitnessStatus
from proto.subjects import AUDIT_STATE_BUCKET, AUDIT_STATE_WITNESS, AUDIT_STATE_WRITER

log = logging.getLogger("lantau.audit")


class WriterState(msgspec.Struct, frozen=True, kw_only=True):
    """Saved after each checkpoint. Never trusted as is: on load, the checkpoint at
    ``checkpoint_log_seq`` must verify, cover the record at ``head_log_seq`` and have
    the root of ``frontier`` (collision resistance binds the frontier to that root)."""

    checkpoint_log_seq: int
    head_log_seq: int
    frontier: merkle.Frontier


_writer = msgspec.msgpack.Decoder(WriterState)


class StateStore:
    def __init__(self, bucket: KeyValue) -> None:
        self._kv = bucket
        self._last_status: tuple[bool, int, str] | None = None

    @classmethod
    async def open(cls, js: JetStreamContext) -> StateStore:
        return cls(await js.key_value(AUDIT_STATE_BUCKET))

    async def writer(self) -> WriterState | None:
        value, _ = await kv.read(self._kv, AUDIT_STATE_WRITER)
        if value is None:
            return None
        try:
            return _writer.decode(value)
        except (msgspec.MsgspecError, ValueError, Exception) as e:  # a bad frontier raises too
            log.warning("writer state unreadable (%s): re-reading the log", type(e).__name__)
            return None

    async def save_writer(self, state: WriterState) -> None:
        await self._kv.put(AUDIT_STATE_WRITER, msgspec.msgpack.encode(state))

    async def publish_status(self, status: WitnessStatus) -> None:
        """Write the witness status when it changed (whether witnessed, and why not)."""
        key = (status.witnessed, status.sinks_up, status.reason)
        if key == self._last_status:
            return
        await self._kv.put(AUDIT_STATE_WITNESS, codec.encode(status))
        self._last_status = key
