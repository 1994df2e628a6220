"""One entry point per operation, whatever the payload kind: parse, sign inputs, assemble.

Each call decodes the payload again and enforces every rule again: ``assemble``
never trusts that ``parse`` ran on the same bytes.
"""

from __future__ import annotations

from libs.chains import btc, eip712, evm, solana
from libs.chains.model import TX_KINDS, ParsedTx
from proto.errors import ErrorCode, LantauError

_Decoded = evm.Decoded | eip712.Decoded | btc.Decoded | solana.Decoded


def _decode(kind: str, payload: bytes, public_key: bytes, chain_hint: str | None) -> _Decoded:
    if kind == "evm_tx":
        return evm.decode(payload, public_key, chain_hint)
    if kind == "evm_typed_data":
        return eip712.decode(payload, public_key, chain_hint)
    if kind == "btc_psbt":
        return btc.decode(payload, public_key, chain_hint)
    if kind == "sol_message":
        return solana.decode(payload, public_key, chain_hint)
    raise LantauError(
        ErrorCode.INVALID_PAYLOAD, f"payload kind {str(kind)[:40]!r} is not one of {TX_KINDS}"
    )


def curve_for(kind: str) -> str:
    """The key type that signs a payload kind: Solana is Ed25519, the others secp256k1."""
    return "ed25519" if kind == "sol_message" else "secp256k1"


def parse(
    kind: str, payload: bytes, public_key: bytes, *, chain_hint: str | None = None
) -> ParsedTx:
    """What the transaction really does, decoded from the bytes to be signed."""
    return _decode(kind, payload, public_key, chain_hint).parsed


def signing_inputs(
    kind: str, payload: bytes, public_key: bytes, *, chain_hint: str | None = None
) -> list[bytes]:
    """Exactly what the HSM signs: 32-byte hashes for secp256k1, the message for Ed25519."""
    return _inputs(_decode(kind, payload, public_key, chain_hint))


def parse_for_signing(
    kind: str, payload: bytes, public_key: bytes, *, chain_hint: str | None = None
) -> tuple[ParsedTx, list[bytes]]:
    """What the transaction does and what the HSM signs for it, from one decoding."""
    d = _decode(kind, payload, public_key, chain_hint)
    return d.parsed, _inputs(d)


def _inputs(d: _Decoded) -> list[bytes]:
    if isinstance(d, evm.Decoded | eip712.Decoded):
        return [d.signing_hash]
    if isinstance(d, btc.Decoded):
        return list(d.sighashes)
    return [d.payload]


def assemble(
    kind: str,
    payload: bytes,
    public_key: bytes,
    signatures: list[tuple[bytes, int | None]],
    *,
    chain_hint: str | None = None,
) -> bytes:
    """What a wallet broadcasts (or, for a PSBT, passes on), after checking every signature."""
    d = _decode(kind, payload, public_key, chain_hint)
    if isinstance(d, evm.Decoded):
        return evm.assemble(d, public_key, signatures)
    if isinstance(d, eip712.Decoded):
        return eip712.assemble(d, public_key, signatures)
    if isinstance(d, btc.Decoded):
        return btc.assemble(d, public_key, signatures)
    return solana.assemble(d, public_key, signatures)


def address_of(chain_family: str, public_key: bytes, *, chain_hint: str | None = None) -> str:
    """The key's address: "eip155" (EIP-55), "bip122" (P2WPKH on the hinted network), "solana"."""
    if chain_family == "eip155":
        return evm.address(public_key)
    if chain_family == "bip122":
        return btc.address(public_key, btc.network_name(chain_hint))
    if chain_family == "solana":
        return solana.address(public_key)
    raise LantauError(
        ErrorCode.INVALID_FIELD,
        f"chain family {str(chain_family)[:40]!r} is not one of eip155, bip122, solana",
    )
