"""Small types used across messages."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


def whole(chars: str) -> str:
    r"""A pattern that ``chars`` must match from the first character to the very last.

    msgspec applies patterns with ``re.search``, where ``$`` also matches before a final
    newline: ``^[a-z]+$`` accepts "id\n", which breaks a NATS subject. ``(?![\s\S])``
    (nothing follows) is the absolute end both in Python and in the ECMA-262 regexes
    that JSON Schema readers use.
    """
    return rf"^{chars}(?![\s\S])"


# Ids appear in NATS subjects and KV keys, so they are restricted to safe characters.
RequestId = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]
KeyId = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]
NodeId = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]
# Requesters and approvers: each is a bus identity and a token of the subjects and KV
# keys that belong to it (lantau.result.<requester>.<request id>).
Identity = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]
# People and things named in records but not on the bus (custodians, operators).
Name = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_.@-]{1,128}"))]
TimestampMs = Annotated[int, msgspec.Meta(ge=0)]
Version = Annotated[int, msgspec.Meta(ge=1)]

# Key types. The first two are the token's own (CKM_ECDSA, CKM_EDDSA). The others
# (docs/keytypes.md) are kept as material sealed under the domain's token key where the
# token has no mechanism for them: HD roots (BIP32 on secp256k1, SLIP-10 on Ed25519),
# ML-DSA-65 (FIPS 204) and HSS/LMS (RFC 8554, stateful). The field keeps its first name,
# ``curve``, on every message.
Curve = Literal["secp256k1", "ed25519", "bip32-secp256k1", "slip10-ed25519", "ml-dsa-65", "lms-hss"]
KeyType = Curve
# "hsm": the private key is a token object; "hsm-wrapped": the token's random generator
# made it and it exists only sealed under a token key, opened in the hsm-node's memory for
# one operation.
Protection = Literal["hsm", "hsm-wrapped"]
# An absolute BIP32/SLIP-10 path written canonically: "m", then steps of decimal indices
# without leading zeros, "'" for hardened (never "h"), at most 255 steps.
DerivationPath = Annotated[
    str,
    msgspec.Meta(max_length=3072, pattern=whole("m(/(0|[1-9][0-9]{0,9})'?){0,255}")),
]
# digest: a 32-byte hash the caller computed (secp256k1 ECDSA signs it as is) and
# message: the bytes themselves (Ed25519 signs the message, as RFC 8032 intends) are
# blind: nobody can tell what they do. The transaction kinds are decoded and judged:
# evm_tx (EIP-1559 or EIP-155 unsigned transaction), evm_typed_data (EIP-712 JSON),
# btc_psbt (BIP-174, version 0, binary), sol_message (a serialized Solana message).
PayloadKind = Literal["digest", "message", "evm_tx", "evm_typed_data", "btc_psbt", "sol_message"]
# The kinds Lantau decodes (libs/chains): policy judges what they do; the others are blind.
TX_KINDS = ("evm_tx", "evm_typed_data", "btc_psbt", "sol_message")

MAX_PAYLOAD_BYTES = 65536
Payload = Annotated[bytes, msgspec.Meta(max_length=MAX_PAYLOAD_BYTES)]


class HssShape(msgspec.Struct, frozen=True, kw_only=True):
    """An HSS key's shape: ``levels`` trees of LMS_SHA256_M32_H<height> with
    LMOTS_SHA256_N32_W<winternitz>; it allows 2^(levels * height) signatures."""

    levels: Annotated[int, msgspec.Meta(ge=1, le=8)] = 2
    height: Literal[5, 10, 15, 20, 25] = 10
    winternitz: Literal[1, 2, 4, 8] = 4


class ExtendedPublic(msgspec.Struct, frozen=True, kw_only=True):
    """An HD key's public half at one path, for watch-only use: BIP32's (K, c) and its
    place in the tree; ``xpub`` is the Base58Check form (secp256k1 only)."""

    path: DerivationPath
    public_key: bytes
    chain_code: bytes
    depth: Annotated[int, msgspec.Meta(ge=0, le=255)]
    parent_fingerprint: bytes
    child_number: Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
    xpub: str = ""


def canonical_json(struct: msgspec.Struct, *, late_fields: tuple[str, ...] = ()) -> bytes:
    """Sorted-key JSON of a Struct, leaving out ``late_fields`` while they are None.

    Fields added to a signed statement after its first version are absent from what was
    signed before they existed: leaving them out while unset keeps those bytes (and the
    signatures over them) unchanged, for every language that reproduces them.
    """
    data = msgspec.to_builtins(struct, order="sorted")
    for name in late_fields:
        if data.get(name, 0) is None:
            del data[name]
    return msgspec.json.encode(data, order="sorted")


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A typed error on the wire: a stable code and a sentence for humans."""

    code: str
    message: str
