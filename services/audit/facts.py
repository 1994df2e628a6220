"""What the audit service reads from a fact: its type, its actor and its request. Pure."""

from __future__ import annotations

import msgspec

from libs.audit.records import content_hash
from proto.audit import AuditFact
from proto.subjects import AUDIT_CHECKPOINT_KEY


class _Envelope(msgspec.Struct):
    """The few fields the audit reads from any message; the rest is covered by its hash."""

    type: str = "unknown"
    request_id: str | None = None
    requester: str | None = None
    actor: str | None = None
    observer: str | None = None
    consumer: str | None = None
    node_id: str | None = None
    node: str | None = None

    def who(self) -> str:
        """The actor: who caused this fact (a requester, policy, a signer, a node...)."""
        if self.type.endswith("_order"):
            return "policy"
        if self.type.endswith("_result"):
            return f"signer@{self.node}" if self.node else "policy"
        return (
            self.actor
            or self.requester
            or self.observer
            or self.consumer
            or self.node_id
            or "platform"
        )


_envelope = msgspec.msgpack.Decoder(_Envelope)
# Envelope fields are copied into the record: one of a near-1 MiB message would take a
# batch past NATS's max payload, and its facts would never reach the log.
ENVELOPE_FIELD_LIMIT = 256


def envelope(data: bytes) -> _Envelope:
    """The envelope of any bytes, every field bounded; never raises (what it cannot read
    is "malformed")."""
    try:
        env = _envelope.decode(data)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        # msgspec lets through RecursionError (deep nesting, even in a field the envelope
        # skips) and UnicodeDecodeError (a str that is not UTF-8).
        return _Envelope(type="malformed")
    long = {
        name: value[:ENVELOPE_FIELD_LIMIT]
        for name in env.__struct_fields__
        if isinstance(value := getattr(env, name), str) and len(value) > ENVELOPE_FIELD_LIMIT
    }
    return msgspec.structs.replace(env, **long) if long else env


def describe(stream: str, seq: int, data: bytes) -> AuditFact:
    """The fact a message of a source stream becomes; never raises: bytes that are no
    message are recorded too, as "malformed"."""
    env = envelope(data)
    return AuditFact(
        stream=stream,
        seq=seq,
        sha256=content_hash(data),
        event_type=env.type,
        actor=env.who()[:ENVELOPE_FIELD_LIMIT],
        request_id=env.request_id,
    )


class _Receipt(msgspec.Struct):
    op: str = ""
    key_id: str = ""
    outcome: str = ""


class _Receipts(msgspec.Struct):
    type: str = ""
    receipts: list[_Receipt] = []


_receipts = msgspec.msgpack.Decoder(_Receipts)


def checkpoint_echo(data: bytes) -> bool:
    """Whether a fact is nothing but a node's receipts for checkpoint signatures: the
    echo of checkpoints already on the log. It is recorded like any fact, but does not
    call for a checkpoint of its own soon: the receipt of checkpoint n can only be
    recorded after n, so if it did, an idle log would get a record and a checkpoint every
    checkpoint_interval_s forever and its head would never be under a checkpoint."""
    try:
        batch = _receipts.decode(data)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        return False
    return (
        batch.type == "hsm_receipts"
        and bool(batch.receipts)
        and all(
            r.op == "sign_checkpoint" and r.key_id == AUDIT_CHECKPOINT_KEY and r.outcome == "done"
            for r in batch.receipts
        )
    )
