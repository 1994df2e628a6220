"""RPC between signers/backup and hsm-node processes, and the nodes' health beats."""

from __future__ import annotations

import msgspec

from proto import SCHEMA_VERSION
from proto.common import Curve, KeyId, NodeId, TimestampMs, Version


class HsmGenerate(msgspec.Struct, frozen=True, kw_only=True, tag="hsm_generate", tag_field="type"):
    """Create a key pair inside the token; idempotent: an existing key_id is returned as is."""

    key_id: KeyId
    curve: Curve
    v: Version = SCHEMA_VERSION


class HsmPublicKey(
    msgspec.Struct, frozen=True, kw_only=True, tag="hsm_public_key", tag_field="type"
):
    key_id: KeyId
    v: Version = SCHEMA_VERSION


class HsmSign(msgspec.Struct, frozen=True, kw_only=True, tag="hsm_sign", tag_field="type"):
    key_id: KeyId
    curve: Curve
    data: bytes
    request_id: str = ""
    v: Version = SCHEMA_VERSION


class HsmWrap(msgspec.Struct, frozen=True, kw_only=True, tag="hsm_wrap", tag_field="type"):
    """Wrap a private key under the domain key-encryption key (never plaintext)."""

    key_id: KeyId
    kek_label: str
    v: Version = SCHEMA_VERSION


class HsmUnwrap(msgspec.Struct, frozen=True, kw_only=True, tag="hsm_unwrap", tag_field="type"):
    key_id: KeyId
    curve: Curve
    kek_label: str
    wrapped: bytes
    public_key: bytes
    v: Version = SCHEMA_VERSION


HsmCommand = HsmGenerate | HsmPublicKey | HsmSign | HsmWrap | HsmUnwrap


class HsmKey(msgspec.Struct, frozen=True, kw_only=True, tag="hsm_key", tag_field="type"):
    key_id: str
    curve: Curve
    public_key: bytes
    created: bool = False
    v: Version = SCHEMA_VERSION


class HsmSignature(
    msgspec.Struct, frozen=True, kw_only=True, tag="hsm_signature", tag_field="type"
):
    key_id: str
    # As the token returns it: r||s for ECDSA, R||S for EdDSA.
    signature: bytes
    v: Version = SCHEMA_VERSION


class HsmWrapped(msgspec.Struct, frozen=True, kw_only=True, tag="hsm_wrapped", tag_field="type"):
    key_id: str
    wrapped: bytes
    v: Version = SCHEMA_VERSION


class HsmFailure(msgspec.Struct, frozen=True, kw_only=True, tag="hsm_failure", tag_field="type"):
    code: str
    message: str
    # False when retrying elsewhere cannot help (unknown key, bad input).
    retryable: bool = True
    v: Version = SCHEMA_VERSION


HsmReply = HsmKey | HsmSignature | HsmWrapped | HsmFailure


class HealthBeat(msgspec.Struct, frozen=True, kw_only=True, tag="health_beat", tag_field="type"):
    node_id: NodeId
    region: str | None = None
    seq: int
    sent_at_ms: TimestampMs
    started_at_ms: TimestampMs
    in_flight: int
    ok: bool
    detail: str = ""
    v: Version = SCHEMA_VERSION
