"""Facts published on ``lantau.event.*`` for backup, audit and operators."""

from __future__ import annotations

import msgspec

from proto import SCHEMA_VERSION
from proto.approvals import ApprovalOutcome
from proto.common import Curve, TimestampMs, Version


class KeyCreated(msgspec.Struct, frozen=True, kw_only=True, tag="key_created", tag_field="type"):
    key_id: str
    curve: Curve
    public_key: bytes
    node: str
    region: str | None = None
    request_id: str
    at_ms: TimestampMs
    v: Version = SCHEMA_VERSION


class KeyReplicated(
    msgspec.Struct, frozen=True, kw_only=True, tag="key_replicated", tag_field="type"
):
    key_id: str
    node: str
    source_node: str
    at_ms: TimestampMs
    v: Version = SCHEMA_VERSION


class NodeStateChanged(
    msgspec.Struct, frozen=True, kw_only=True, tag="node_state_changed", tag_field="type"
):
    node_id: str
    observer: str
    old: str
    new: str
    reason: str
    at_ms: TimestampMs
    v: Version = SCHEMA_VERSION


class AdminAction(msgspec.Struct, frozen=True, kw_only=True, tag="admin_action", tag_field="type"):
    """An operator's command on the HSMs, recorded before it runs and again when it ends."""

    actor: str
    command: str
    node: str
    # "started", then "completed" or "failed"; a "started" alone means it was cut off.
    phase: str
    detail: str = ""
    at_ms: TimestampMs
    v: Version = SCHEMA_VERSION


class RejectedMessage(
    msgspec.Struct, frozen=True, kw_only=True, tag="rejected_message", tag_field="type"
):
    """A message a consumer could not process, kept on the dead-letter stream."""

    stream: str
    consumer: str
    stream_seq: int
    subject: str
    deliveries: int
    code: str
    message: str
    request_id: str | None = None
    at_ms: TimestampMs
    v: Version = SCHEMA_VERSION


Event = KeyCreated | KeyReplicated | NodeStateChanged | AdminAction | ApprovalOutcome
