"""Real unsigned transactions, as a wallet would hand them to Lantau to sign.

For the demo, the end-to-end tests and tests/chains. Each is built by its chain's own
library (eth-account, embit, solders and solana-py's SPL builders), never by hand, so
what Lantau decodes is what real software produces. Nothing here is broadcast: Bitcoin
inputs spend a synthetic funding transaction, Solana messages name a made-up blockhash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import eth_abi
import rlp
import spl.token.instructions as spl_ix
from embit import ec
from embit.psbt import PSBT
from embit.script import Script, address_to_scriptpubkey, p2wpkh
from embit.transaction import Transaction, TransactionInput, TransactionOutput
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from solders.hash import Hash
from solders.instruction import Instruction
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.models import TransferCheckedParams

GWEI = 10**9
# eth-account builds only signed transactions: one is signed with this throwaway key and
# its signature fields are dropped, leaving the unsigned encoding a wallet would hand over.
_THROWAWAY_KEY = hashlib.sha256(b"lantau devkit: throwaway EVM key").digest()
BLOCKHASH = Hash(hashlib.sha256(b"lantau devkit: a recent blockhash").digest())

# -- EVM -----------------------------------------------------------------------------


def unsigned_evm(tx: dict[str, Any]) -> bytes:
    """The unsigned encoding of an eth-account transaction dict: ``0x02 || rlp(9 fields)``
    for EIP-1559, ``rlp([..., chainId, 0, 0])`` for legacy EIP-155 (and without a chainId,
    the pre-EIP-155 six fields, which Lantau refuses)."""
    raw = bytes(Account.sign_transaction(tx, _THROWAWAY_KEY).raw_transaction)
    if raw[0] == 2:
        return b"\x02" + rlp.encode(rlp.decode(raw[1:])[:9])
    fields = rlp.decode(raw)[:6]
    return rlp.encode([*fields, tx["chainId"], 0, 0]) if "chainId" in tx else rlp.encode(fields)


def eip1559(
    to: str,
    *,
    value: int = 0,
    data: bytes = b"",
    chain_id: int = 1,
    nonce: int = 0,
    gas: int = 21_000,
    max_fee: int = 30 * GWEI,
    tip: int = 2 * GWEI,
) -> dict[str, Any]:
    """An EIP-1559 transaction dict in eth-account's form."""
    return {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": to_checksum_address(to),
        "value": value,
        "gas": gas,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": tip,
        "data": data,
    }


def call(signature: str, *args: object) -> bytes:
    """ABI calldata for a ``name(address,uint256)`` function (ERC-20 transfer, approve)."""
    return function_signature_to_4byte_selector(signature) + eth_abi.encode(
        ["address", "uint256"], list(args)
    )


def eth_transfer(to: str, value: int, **over: Any) -> bytes:
    """An unsigned EIP-1559 native transfer."""
    return unsigned_evm(eip1559(to, value=value, **over))


def erc20_transfer(token: str, to: str, amount: int, **over: Any) -> bytes:
    """An unsigned EIP-1559 call of ``token.transfer(to, amount)``."""
    over.setdefault("gas", 65_000)
    data = call("transfer(address,uint256)", to_checksum_address(to), amount)
    return unsigned_evm(eip1559(token, data=data, **over))


# -- EIP-712 ---------------------------------------------------------------------------

DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
PERMIT_TYPE = [
    {"name": "owner", "type": "address"},
    {"name": "spender", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]


def permit(
    owner: str,
    token: str,
    spender: str,
    value: int | str,
    *,
    chain_id: int = 1,
    nonce: int = 0,
    deadline: int = 1_900_000_000,
    name: str = "Demo USD",
) -> dict[str, Any]:
    """An EIP-2612 permit document (``eth_signTypedData_v4``'s input). dApps send uint256
    values as decimal strings: JavaScript numbers cannot hold them."""
    return {
        "types": {"EIP712Domain": DOMAIN_TYPE, "Permit": PERMIT_TYPE},
        "primaryType": "Permit",
        "domain": {
            "name": name,
            "version": "2",
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(token),
        },
        "message": {
            "owner": to_checksum_address(owner),
            "spender": to_checksum_address(spender),
            "value": str(value),
            "nonce": nonce,
            "deadline": deadline,
        },
    }


def typed_data(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# -- Bitcoin ---------------------------------------------------------------------------


def funding(*outs: tuple[int, Script], salt: int = 0xAA) -> Transaction:
    """A previous transaction paying ``outs`` (its own input is arbitrary: never checked)."""
    return Transaction(
        vin=[TransactionInput(bytes([salt]) * 32, 0)],
        vout=[TransactionOutput(v, s) for v, s in outs],
    )


def psbt_of(
    spends: Sequence[tuple[Transaction, int]],
    outs: Sequence[tuple[int, Script]],
    *,
    full: bool = True,
    witness: bool = True,
    sequence: int = 0xFFFFFFFD,
) -> PSBT:
    """A PSBT spending output ``i`` of each previous transaction, with its UTXO data:
    ``non_witness_utxo`` (the whole previous transaction) when ``full``, ``witness_utxo``
    for segwit outputs when ``witness``."""
    tx = Transaction(
        vin=[TransactionInput(prev.txid(), i, sequence=sequence) for prev, i in spends],
        vout=[TransactionOutput(v, s) for v, s in outs],
    )
    psbt = PSBT(tx)
    for inp, (prev, i) in zip(psbt.inputs, spends, strict=True):
        if full:
            inp.non_witness_utxo = prev
        if witness and prev.vout[i].script_pubkey.script_type() == "p2wpkh":
            inp.witness_utxo = prev.vout[i]
    return psbt


@dataclass(frozen=True)
class BtcSpend:
    """A PSBT and, for checking its signatures, the (amount, scriptPubKey) of each input."""

    psbt: PSBT
    spent: list[tuple[int, bytes]]

    @property
    def payload(self) -> bytes:
        return bytes(self.psbt.serialize())


def btc_spend(
    public_key: bytes,
    to: str,
    amount: int,
    *,
    fee: int = 1_000,
    change: int = 40_000,
    salt: int = 1,
) -> BtcSpend:
    """A P2WPKH spend of this key's output in a synthetic funding transaction: ``amount``
    to ``to``, ``change`` back to the key, ``fee`` left over."""
    ours = p2wpkh(ec.PublicKey.parse(public_key))
    held = amount + change + fee
    prev = funding((held, ours), salt=salt)
    outs = [(amount, address_to_scriptpubkey(to))]
    if change:
        outs.append((change, ours))
    return BtcSpend(psbt=psbt_of([(prev, 0)], outs), spent=[(held, ours.data)])


# -- Solana ----------------------------------------------------------------------------


def sol_send(source: bytes | Pubkey, to: str | Pubkey, lamports: int) -> Instruction:
    """A System Program transfer."""
    return transfer(
        TransferParams(from_pubkey=_pubkey(source), to_pubkey=_pubkey(to), lamports=lamports)
    )


def spl_send(
    owner: bytes | Pubkey,
    *,
    source: str | Pubkey,
    mint: str | Pubkey,
    dest: str | Pubkey,
    amount: int,
    decimals: int,
    program: Pubkey = TOKEN_PROGRAM_ID,
) -> Instruction:
    """An SPL Token ``transferChecked`` between token accounts, authorised by ``owner``."""
    return spl_ix.transfer_checked(
        TransferCheckedParams(
            program_id=program,
            source=_pubkey(source),
            mint=_pubkey(mint),
            dest=_pubkey(dest),
            owner=_pubkey(owner),
            amount=amount,
            decimals=decimals,
        )
    )


def sol_message(
    payer: bytes | Pubkey, *instructions: Instruction, blockhash: Hash = BLOCKHASH
) -> bytes:
    """The serialised legacy message (what Ed25519 signs), ``payer`` paying the fee."""
    return bytes(Message.new_with_blockhash(list(instructions), _pubkey(payer), blockhash))


def _pubkey(key: bytes | str | Pubkey) -> Pubkey:
    if isinstance(key, Pubkey):
        return key
    if isinstance(key, bytes):
        return Pubkey.from_bytes(key)
    return Pubkey.from_string(key)
