"""Facts published on ``lantau.event.*`` for backup, audit and operators."""

from __future__ import annotations

from typing import Literal

import msgspec

from proto.approvals import ApprovalOutcome
from proto.base import Message
from proto.common import Curve, TimestampMs
from proto.credentials import CredentialOutcome


class KeyCreated(Message, tag="key_created", frozen=True, kw_only=True):
    key_id: str
    curve: Curve
    public_key: bytes
    node: str
    region: str | None = None
    request_id: str
    at_ms: TimestampMs


class KeyReplicated(Message, tag="key_replicated", frozen=True, kw_only=True):
    key_id: str
    node: str
    source_node: str
    at_ms: TimestampMs


class NodeStateChanged(Message, tag="node_state_changed", frozen=True, kw_only=True):
    node_id: str
    observer: str
    old: str
    new: str
    reason: str
    at_ms: TimestampMs


class AdminAction(Message, tag="admin_action", frozen=True, kw_only=True):
    """An operator's command on the HSMs, recorded before it runs and again when it ends."""

    actor: str
    command: str
    node: str
    # "started", then "completed" or "failed"; a "started" alone means it was cut off.
    phase: str
    detail: str = ""
    at_ms: TimestampMs


class BackupManifestEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One key as an offline backup ceremony found or left it."""

    key_id: str
    curve: Curve
    public_key: bytes
    region: str | None = None
    # held: already in the backup set; copied: put there by this ceremony; verified:
    # restored into a scratch token and signed; restored: copied back to ``nodes``;
    # not_backed_up / not_restored: ``reason`` is the error code that says why.
    status: Literal["held", "copied", "verified", "restored", "not_backed_up", "not_restored"]
    nodes: list[str] = []
    reason: str = ""


class BackupManifest(Message, tag="backup_manifest", frozen=True, kw_only=True):
    """What one offline backup ceremony found and did, signed with the backup set's key
    (the key only a quorum of its custodians can rebuild): the audit trail keeps it."""

    backup_set: str
    region: str | None = None
    # The sharing of the set's secret the ceremony was run with (its custodians' shares).
    set_fingerprint: str
    ceremony: Literal["run", "verify", "restore"]
    actor: str
    entries: list[BackupManifestEntry]
    at_ms: TimestampMs
    # Hex Ed25519 public key of the backup set ([evidence] backup_set_keys).
    signed_by: str
    signature: bytes = b""


class ConsoleEvent(Message, tag="console_event", frozen=True, kw_only=True):
    """Something the approvers' console refused (or a person did there) that policy never
    saw: a sign-in with an unknown or revoked key, a vote outside the person's groups."""

    person: str
    action: str
    accepted: bool
    code: str = ""
    message: str
    # The held request concerned, when there is one (<requester>.<request id>).
    request: str = ""
    remote: str = ""
    at_ms: TimestampMs


class RejectedMessage(Message, tag="rejected_message", frozen=True, kw_only=True):
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


Event = (
    KeyCreated
    | KeyReplicated
    | NodeStateChanged
    | AdminAction
    | ApprovalOutcome
    | BackupManifest
    | CredentialOutcome
    | ConsoleEvent
)
