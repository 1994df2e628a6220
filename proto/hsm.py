"""RPC between signers/backup and hsm-node processes, and the nodes' health beats."""

from __future__ import annotations

import msgspec

from proto.approvals import ApprovalVote
from proto.audit import AuditCheckpoint
from proto.authorization import CloneAuthorization, CreateKeyAuthorization, SignAuthorization
from proto.base import Message
from proto.common import (
    Curve,
    DerivationPath,
    ExtendedPublic,
    KeyId,
    NodeId,
    Protection,
    TimestampMs,
)


class HsmGenerate(Message, tag="hsm_generate", frozen=True, kw_only=True):
    """Create a key pair inside the token; idempotent: an existing key_id is returned as is.

    A requester's key comes with the requester's signed request and policy's create
    authorization; a platform key (id ``lantau-...``) with neither."""

    key_id: KeyId
    curve: Curve
    request: bytes = b""
    authorization: CreateKeyAuthorization | None = None


class HsmPublicKey(Message, tag="hsm_public_key", frozen=True, kw_only=True):
    key_id: KeyId
    # HD keys: the extended public key at this path (the node derives it from the root).
    path: DerivationPath | None = None


class HsmSign(Message, tag="hsm_sign", frozen=True, kw_only=True):
    """Sign a request: the node checks the evidence and computes the bytes itself."""

    key_id: KeyId
    curve: Curve
    # The requester's SignRequest exactly as the requester signed it.
    request: bytes
    authorization: SignAuthorization
    # The approvers' votes the authorization counted (when it needed approvals).
    approvals: list[ApprovalVote] = []


class HsmSignCheckpoint(Message, tag="hsm_sign_checkpoint", frozen=True, kw_only=True):
    """The audit checkpoint key signs checkpoints and nothing else: the node computes the
    digest from the checkpoint itself."""

    key_id: KeyId
    checkpoint: AuditCheckpoint


class HsmCloneCheck(Message, tag="hsm_clone_check", frozen=True, kw_only=True):
    """Prove a clone works: sign a fixed, domain-separated message naming the key and the
    node (a statement nobody could want signed for any other purpose)."""

    key_id: KeyId
    curve: Curve


class HsmWrap(Message, tag="hsm_wrap", frozen=True, kw_only=True):
    """Wrap a private key under the domain key-encryption key (never plaintext)."""

    key_id: KeyId
    kek_label: str
    clone: CloneAuthorization
    # Policy's authorization that created the key (its region); None for platform keys.
    created: CreateKeyAuthorization | None = None


class HsmUnwrap(Message, tag="hsm_unwrap", frozen=True, kw_only=True):
    key_id: KeyId
    curve: Curve
    kek_label: str
    wrapped: bytes
    public_key: bytes
    clone: CloneAuthorization
    created: CreateKeyAuthorization | None = None


class HsmCapabilitiesQuery(Message, tag="hsm_capabilities_query", frozen=True, kw_only=True):
    """Which mechanisms and key types the token supports (new key types ask first)."""


HsmCommand = (
    HsmGenerate
    | HsmPublicKey
    | HsmSign
    | HsmSignCheckpoint
    | HsmCloneCheck
    | HsmWrap
    | HsmUnwrap
    | HsmCapabilitiesQuery
)

# The operations an hsm-node serves, one RPC subject each, and the command each takes.
COMMANDS: dict[str, type] = {
    "generate": HsmGenerate,
    "public_key": HsmPublicKey,
    "sign": HsmSign,
    "sign_checkpoint": HsmSignCheckpoint,
    "clone_check": HsmCloneCheck,
    "wrap": HsmWrap,
    "unwrap": HsmUnwrap,
    "capabilities": HsmCapabilitiesQuery,
}


class HsmKey(Message, tag="hsm_key", frozen=True, kw_only=True):
    key_id: str
    curve: Curve
    public_key: bytes
    created: bool = False
    protection: Protection = "hsm"
    # HD keys: the extended public key at the path asked for (the root "m" by default).
    hd: ExtendedPublic | None = None


class HsmSignature(Message, tag="hsm_signature", frozen=True, kw_only=True):
    key_id: str
    # As the token returns them, one per signed byte string: r||s for ECDSA, R||S for EdDSA.
    signatures: list[bytes]
    # The public key that signed when it is not the key's own: an HD key's derived child.
    public_key: bytes = b""


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
    # How each key type in key_types is kept: "hsm" (a token mechanism) or "hsm-wrapped"
    # (sealed material: docs/keytypes.md).
    protections: dict[str, Protection] = {}
    # The key domain's sealing key is on this token (hsm-wrapped types need it).
    sealing_key: bool = False


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


class HsmReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """One operation an hsm-node performed or refused: audit chains every one and
    reconciles signatures against orders (a signature without an order is an alert)."""

    op: str
    key_id: str
    # "<requester>.<request id>" for a request's signature or key; "" otherwise.
    request_key: str = ""
    # statement_hash of the authorization that allowed it ("" when none applies).
    authorization: str = ""
    # SHA-256 of each byte string signed.
    digests: list[str] = []
    # "done", "replayed" (a repeat answered from the replay record) or "refused".
    outcome: str
    code: str = ""
    at_ms: TimestampMs
    # lms-hss: the one-time index each signature used (op "sign"), or the range
    # [start, end) this node leased by compare-and-set before using any of it (op "lease").
    indices: list[int] = []
    lease: list[int] = []


class HsmReceipts(Message, tag="hsm_receipts", frozen=True, kw_only=True):
    """A batch of one node's receipts, published together (one durable write)."""

    node: NodeId
    receipts: list[HsmReceipt]
