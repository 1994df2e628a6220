"""Operator queries answered by running services (``lantau hsm status``, ``lantau keys
xpub``)."""

from __future__ import annotations

import msgspec

from proto.base import Message
from proto.common import DerivationPath, ErrorInfo, ExtendedPublic, KeyId, TimestampMs


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    state: str
    circuit: str
    in_flight: int
    remote_in_flight: int
    errors: int
    timeouts: int
    successes: int
    last_beat_age_ms: int | None = None
    region: str | None = None


class PoolStatus(Message, tag="pool_status", frozen=True, kw_only=True):
    """One signer replica's view of the HSM pool."""

    signer: str
    at_ms: TimestampMs
    nodes: list[NodeStatus]


class XpubQuery(Message, tag="xpub_query", frozen=True, kw_only=True):
    """Ask a signer for an HD key's extended public key at a path: it asks a node holding
    the key to derive it, checks it, and records it in the key directory."""

    key_id: KeyId
    path: DerivationPath


class XpubAnswer(Message, tag="xpub_answer", frozen=True, kw_only=True):
    key_id: str
    extended: ExtendedPublic | None = None
    error: ErrorInfo | None = None
