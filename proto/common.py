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

Curve = Literal["secp256k1", "ed25519"]
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


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A typed error on the wire: a stable code and a sentence for humans."""

    code: str
    message: str
