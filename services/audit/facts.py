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


def describe(stream: str, seq: int, data: bytes) -> AuditFact:
    """The fact a message of a source stream becomes; bytes that are no message are
    recorded too, as "malformed"."""
    try:
        env = _envelope.decode(data)
    except msgspec.MsgspecError:
        env = _Envelope(type="malformed")
    return AuditFact(
        stream=stream,
        seq=seq,
        sha256=content_hash(data),
        event_type=str(env.type)[:64],
        actor=str(env.who())[:128],
        request_id=str(env.request_id)[:128] if env.request_id is not None else None,
    )
