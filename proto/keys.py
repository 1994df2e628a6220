"""The key directory: one record per key in the ``lantau_keys`` KV bucket."""

from __future__ import annotations

from typing import Literal

from proto.authorization import CreateKeyAuthorization
from proto.base import Message
from proto.common import Curve, TimestampMs


class KeyRecord(Message, tag="key_record", frozen=True, kw_only=True):
    key_id: str
    curve: Curve
    # "pending": the id is reserved and the key is being generated on nodes[0];
    # "active": generated, public_key set. Reserving first means one key id can
    # never end up as two different keys on two HSMs.
    status: Literal["pending", "active"] = "active"
    public_key: bytes = b""
    region: str | None = None
    owner: str
    # HSM nodes known to hold the private key; changed only by KV compare-and-set.
    nodes: list[str]
    created_at_ms: TimestampMs
    created_by_request: str
    # Policy's authorization that created it (its region among other things): the
    # hsm-nodes check it before they clone the key. None for platform keys (lantau-...).
    authorization: CreateKeyAuthorization | None = None
    # Offline backup sets ([[backup_sets]]) holding a verified copy, added by
    # `lantau backup run` by compare-and-set: the key's offline copies.
    backup_sets: list[str] = []
