"""RPC between signers/backup and hsm-node processes, and the nodes' health beats."""

from __future__ import annotations

from proto.base import Message
from proto.common import Curve, KeyId, NodeId, TimestampMs


class HsmGenerate(Message, tag="hsm_generate", frozen=True, kw_only=True):
    """Create a key pair inside the token; idempotent: an existing key_id is returned as is."""

    key_id: KeyId
    curve: Curve


class HsmPublicKey(Message, tag="hsm_public_key", frozen=True, kw_only=True):
    key_id: KeyId


class HsmSign(Message, tag="hsm_sign", frozen=True, kw_only=True):
    key_id: KeyId
    curve: Curve
    data: bytes
    # "<requester>.<request id>" for a request's signature: the node signs it once and
    # answers a repeat with the same signature (its replay record) until the deadline.
    request_key: str = ""
    deadline_ms: TimestampMs = 0


class HsmWrap(Message, tag="hsm_wrap", frozen=True, kw_only=True):
    """Wrap a private key under the domain key-encryption key (never plaintext)."""

    key_id: KeyId
    kek_label: str


class HsmUnwrap(Message, tag="hsm_unwrap", frozen=True, kw_only=True):
    key_id: KeyId
    curve: Curve
    kek_label: str
    wrapped: bytes
    public_key: bytes


class HsmCapabilitiesQuery(Message, tag="hsm_capabilities_query", frozen=True, kw_only=True):
    """Which mechanisms and key types the token supports (new key types ask first)."""


HsmCommand = HsmGenerate | HsmPublicKey | HsmSign | HsmWrap | HsmUnwrap | HsmCapabilitiesQuery

# The operations an hsm-node serves, one RPC subject each, and the command each takes.
COMMANDS: dict[str, type] = {
    "generate": HsmGenerate,
    "public_key": HsmPublicKey,
    "sign": HsmSign,
    "wrap": HsmWrap,
    "unwrap": HsmUnwrap,
    "capabilities": HsmCapabilitiesQuery,
}


class HsmKey(Message, tag="hsm_key", frozen=True, kw_only=True):
    key_id: str
    curve: Curve
    public_key: bytes
    created: bool = False


class HsmSignature(Message, tag="hsm_signature", frozen=True, kw_only=True):
    key_id: str
    # As the token returns it: r||s for ECDSA, R||S for EdDSA.
    signature: bytes


class HsmWrapped(Message, tag="hsm_wrapped", frozen=True, kw_only=True):
    key_id: str
    wrapped: bytes


class HsmFailure(Message, tag="hsm_failure", frozen=True, kw_only=True):
    code: str
    message: str
    # False when retrying elsewhere cannot help (unknown key, bad input).
    retryable: bool = True


class HsmCapabilities(Message, tag="hsm_capabilities", frozen=True, kw_only=True):
    # PKCS#11 mechanism names the token reports (e.g. "ECDSA", "EDDSA", "AES_KEY_WRAP_PAD").
    mechanisms: list[str]
    # Curves / key types this node can generate and sign with natively.
    key_types: list[str]
    # True if the token can wrap private keys of each type for cloning (by key type).
    wrappable: list[str] = []


HsmReply = HsmKey | HsmSignature | HsmWrapped | HsmCapabilities | HsmFailure


class HealthBeat(Message, tag="health_beat", frozen=True, kw_only=True):
    node_id: NodeId
    region: str | None = None
    seq: int
    sent_at_ms: TimestampMs
    started_at_ms: TimestampMs
    in_flight: int
    ok: bool
    detail: str = ""
