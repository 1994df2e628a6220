"""Independent checks of what the signer returns, with libraries other than the ones it
signs with: for the demo, the end-to-end tests and tests/chains.

Each check raises ``NotVerified`` (or the verifying library's own error) when the
signature is not what the chain would accept, and returns one line saying what held.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import nacl.signing
from bitcoin.core import CTransaction, Hash160
from bitcoin.core.script import (
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    CScript,
    SignatureHash,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from embit.finalizer import finalize_psbt
from embit.psbt import PSBT
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys import keys as eth_keys
from solders.message import to_bytes_versioned
from solders.transaction import VersionedTransaction


class NotVerified(Exception):
    """A signed payload that the chain would not accept from this key."""


def evm_address(public_key: bytes) -> str:
    """The EIP-55 address of a compressed secp256k1 key."""
    return str(eth_keys.PublicKey.from_compressed_bytes(public_key).to_checksum_address())


def check_evm_tx(signed: bytes, public_key: bytes) -> str:
    """eth-account recovers the signer of a raw signed transaction: it must be this key."""
    sender = Account.recover_transaction(signed)
    if sender != evm_address(public_key):
        raise NotVerified(f"the transaction recovers to {sender}, not to this key")
    return f"eth-account recovers the sender {sender}: this key's address"


def check_typed_data(doc: dict[str, Any] | bytes, signature: bytes, public_key: bytes) -> str:
    """eth-account recovers the signer of an EIP-712 document from the 65-byte r||s||v."""
    full = json.loads(doc) if isinstance(doc, bytes) else doc
    signer = Account.recover_message(encode_typed_data(full_message=full), signature=signature)
    if signer != evm_address(public_key):
        raise NotVerified(f"the typed data signature recovers to {signer}, not to this key")
    return f"eth-account recovers the EIP-712 signer {signer}: this key's address"


def check_psbt(signed: bytes, spent: Sequence[tuple[int, bytes]]) -> str:
    """embit finalises the signed PSBT; python-bitcoinlib computes every input's sighash
    again and OpenSSL verifies its signature."""
    final = finalize_psbt(PSBT.parse(signed))
    if final is None:
        raise NotVerified("the PSBT does not finalise: a signature is missing")
    raw = bytes(final.serialize())
    verify_bitcoin_inputs(raw, spent)
    return (
        f"finalised ({len(raw)} bytes, txid {final.txid().hex()}); every input verified "
        "with python-bitcoinlib's sighash and OpenSSL"
    )


def verify_bitcoin_inputs(raw_tx: bytes, spent: Sequence[tuple[int, bytes]]) -> None:
    """Every input of a finalised transaction checked against python-bitcoinlib's sighash
    (BIP-143 for P2WPKH, legacy for P2PKH); ``spent`` is each input's (amount, script)."""
    tx = CTransaction.deserialize(raw_tx)
    if len(tx.vin) != len(spent):
        raise NotVerified(f"{len(tx.vin)} inputs but {len(spent)} spent outputs given")
    for i, (value, script) in enumerate(spent):
        spk = CScript(script)
        if spk.is_witness_v0_keyhash():
            sig, pub = tx.wit.vtxinwit[i].scriptWitness.stack
            code = CScript([OP_DUP, OP_HASH160, Hash160(pub), OP_EQUALVERIFY, OP_CHECKSIG])
            digest = SignatureHash(code, tx, i, SIGHASH_ALL, value, SIGVERSION_WITNESS_V0)
            owner = script[2:]
        elif len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
            sig, pub = list(CScript(tx.vin[i].scriptSig))
            digest = SignatureHash(spk, tx, i, SIGHASH_ALL)
            owner = script[3:23]
        else:
            raise NotVerified(f"input {i} spends a script this check does not know")
        if Hash160(pub) != owner:
            raise NotVerified(f"input {i} is signed by a key that does not own its output")
        if sig[-1] != SIGHASH_ALL:
            raise NotVerified(f"input {i} is not signed with SIGHASH_ALL")
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub)
        key.verify(sig[:-1], digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def check_solana(signed: bytes, message: bytes, public_key: bytes) -> str:
    """solders verifies the transaction's signatures; PyNaCl verifies ours on the message."""
    tx = VersionedTransaction.from_bytes(signed)
    if to_bytes_versioned(tx.message) != message:
        raise NotVerified("the signed transaction carries another message")
    keys = list(tx.message.account_keys)
    signers = keys[: tx.message.header.num_required_signatures]
    mine = [bytes(k) for k in signers].index(public_key)
    if not all(tx.verify_with_results()):
        raise NotVerified("solders finds a signature that does not verify")
    nacl.signing.VerifyKey(public_key).verify(message, bytes(tx.signatures[mine]))
    return f"solders and PyNaCl verify the signature of {signers[mine]} over the message"
