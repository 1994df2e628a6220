"""The key directory: one record per key in the ``lantau_keys`` KV bucket; and the
sealed material of key types the token has no mechanism for (``lantau_sealed``)."""

from __future__ import annotations

from typing import Literal

from proto.authorization import CreateKeyAuthorization
from proto.base import Message
from proto.common import Curve, ExtendedPublic, HssShape, KeyId, NodeId, Protection, TimestampMs


class KeyRecord(Message, tag="key_record", frozen=True, kw_only=True):
    key_id: str
    curve: Curve
    # "pending": the id is reserved and the key is being generated on nodes[0];
    # "active": generated, public_key set. Reserving first means one key id can
    # never end up as two different keys on two HSMs.
    status: Literal["pending", "active"] = "active"
    # HD keys: the root's (master) public key; every signature is by a derived child.
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
    # "hsm": a token object; "hsm-wrapped": sealed material (docs/keytypes.md).
    protection: Protection = "hsm"
    # lms-hss: the tree shape (its one-time index ledger is in lantau_hss_ledger).
    hss: HssShape | None = None
    # HD keys: extended public keys exported so far, the root ("m") first; policy and
    # signers derive children below them (non-hardened steps) without asking an HSM.
    xpubs: list[ExtendedPublic] = []


class SealedKey(Message, tag="sealed_key", frozen=True, kw_only=True):
    """Key material that exists only sealed (AES-GCM) under the key domain's sealing key.

    Ciphertext: every hsm-node of the domain may read it, and opens it only for a key
    whose creation record puts the key in the node's region. The GCM associated data
    binds the blob to this key id, key type (and HSS shape) and creation record: a blob
    moved to another record does not open.
    """

    key_id: KeyId
    key_type: Curve
    blob: bytes
    # As computed from the material when it was sealed (nodes recompute it).
    public_key: bytes
    hss: HssShape | None = None
    # Policy's creation authorization (its region); None for platform keys.
    created: CreateKeyAuthorization | None = None
    sealed_by: NodeId
    sealed_at_ms: TimestampMs
