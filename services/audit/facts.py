"""What the audit service reads from a fact: its type, its actor and its request. Pure."""

from __future__ import annotations

import msgspec

from libs.audit.records import content_hash
from proto.audit import AuditFact


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
