"""EVM transactions: EIP-1559 (type 2) and legacy EIP-155, unsigned, as a wallet hands them.

The payload is the unsigned encoding (``0x02 || rlp([...9 fields])`` or
``rlp([nonce, gasPrice, gas, to, value, data, chainId, 0, 0])``) whose keccak is the
signing hash. An already-signed transaction is refused, never stripped: signing
what someone else already signed is a mix-up worth stopping at the door.
"""

from __future__ import annotations

from dataclasses import dataclass

import eth_abi
import rlp
from eth_keys import keys as eth_keys
from eth_utils import function_signature_to_4byte_selector, keccak, to_checksum_address
from rlp.sedes import Binary, CountableList, List, big_endian_int, binary

from libs.chains import guards
from libs.chains.model import Movement, ParsedTx, units
from proto.errors import ErrorCode, LantauError

# Every EVM chain's native coin is reported as "ETH" (18 decimals): the chain id,
# not the symbol, says which network (Polygon's MATIC shows as ETH on eip155:137).
NATIVE = "ETH"
DECIMALS = 18
UINT256_MAX = 2**256 - 1
# EIP-2681 caps the nonce; gas limits above 2**64 exist on no client.
_UINT64_MAX = 2**64 - 1

TRANSFER = function_signature_to_4byte_selector("transfer(address,uint256)")
APPROVE = function_signature_to_4byte_selector("approve(address,uint256)")
_ERC20_CALLS = {TRANSFER: "erc20.transfer", APPROVE: "erc20.approve"}

_TO = Binary.fixed_length(20, allow_empty=True)
_ACCESS_LIST = CountableList(
    List([Binary.fixed_length(20), CountableList(Binary.fixed_length(32))])
)
_SIG = [("y", big_endian_int), ("r", big_endian_int), ("s", big_endian_int)]


class _Unsigned1559(rlp.Serializable):
    fields = [
        ("chain_id", big_endian_int),
        ("nonce", big_endian_int),
        ("max_priority_fee_per_gas", big_endian_int),
        ("max_fee_per_gas", big_endian_int),
        ("gas", big_endian_int),
        ("to", _TO),
        ("value", big_endian_int),
        ("data", binary),
        ("access_list", _ACCESS_LIST),
    ]


class _Signed1559(rlp.Serializable):
    fields = _Unsigned1559._meta.fields + tuple(_SIG)


class _Legacy(rlp.Serializable):
    # Unsigned EIP-155 form: (v, r, s) = (chainId, 0, 0); signed: the real v, r, s.
    fields = [
        ("nonce", big_endian_int),
        ("gas_price", big_endian_int),
        ("gas", big_endian_int),
        ("to", _TO),
        ("value", big_endian_int),
        ("data", binary),
        ("v", big_endian_int),
        ("r", big_endian_int),
        ("s", big_endian_int),
    ]


@dataclass(frozen=True)
class Decoded:
    parsed: ParsedTx
    signing_hash: bytes
    tx: _Unsigned1559 | _Legacy


def address(public_key: bytes) -> str:
    """EIP-55 checksummed address of a compressed secp256k1 key."""
    guards.secp256k1_key(public_key)
    return str(eth_keys.PublicKey.from_compressed_bytes(public_key).to_checksum_address())


def check_chain_hint(chain_id: int, hint: str | None) -> None:
    ref = guards.chain_reference(hint, "eip155")
    if ref is not None and ref != str(chain_id):
        raise LantauError(
            ErrorCode.CHAIN_MISMATCH,
            f"the transaction is for chain eip155:{chain_id} but chain_hint says {hint}",
        )


def eth(amount: int) -> str:
    return f"{units(amount, DECIMALS)} {NATIVE} ({amount} wei)"


def decode(payload: bytes, public_key: bytes, chain_hint: str | None) -> Decoded:
    guards.check_payload_size(payload)
    sender = address(public_key)
    tx: _Unsigned1559 | _Legacy
    if payload[0] == 0x02:
        with guards.decoding("EIP-1559 transaction is not valid RLP"):
            items = rlp.decode(payload[1:])
        if isinstance(items, list) and len(items) == len(_Signed1559._meta.fields):
            raise _already_signed()
        with guards.decoding("EIP-1559 transaction does not have the 9 unsigned fields"):
            tx = rlp.decode(payload[1:], sedes=_Unsigned1559)
        chain_id, gas_price, fee_line = tx.chain_id, tx.max_fee_per_gas, "max fee per gas"
        if tx.max_priority_fee_per_gas > tx.max_fee_per_gas:
            raise LantauError(
                ErrorCode.INVALID_TRANSACTION, "maxPriorityFeePerGas is above maxFeePerGas"
            )
        _check_uint256("maxPriorityFeePerGas", tx.max_priority_fee_per_gas)
        signed_form = b"\x02" + rlp.encode(tx)
    elif payload[0] >= 0xC0:
        with guards.decoding("legacy transaction is not valid RLP"):
            items = rlp.decode(payload)
        if isinstance(items, list) and len(items) == 6:
            raise LantauError(
                ErrorCode.CHAIN_ID_REQUIRED,
                "legacy transaction without EIP-155 chain id: it could be replayed on any chain",
            )
        with guards.decoding("legacy transaction does not have the 9 EIP-155 fields"):
            tx = rlp.decode(payload, sedes=_Legacy)
        if tx.r != 0 or tx.s != 0:
            raise _already_signed()
        chain_id, gas_price, fee_line = tx.v, tx.gas_price, "gas price"
        signed_form = rlp.encode(tx)
    elif payload[0] < 0x80:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION,
            f"EVM transaction type {payload[0]} is not supported (only type 2 and legacy)",
        )
    else:
        raise LantauError(ErrorCode.INVALID_TRANSACTION, "EVM transaction is not an RLP list")
    # rlp.decode is strict about canonical form; this makes "what we hash" and "what
    # was handed" the same bytes whatever a future library version tolerates.
    if signed_form != bytes(payload):
        raise LantauError(ErrorCode.INVALID_TRANSACTION, "EVM transaction is not canonical RLP")
    if chain_id == 0:
        raise LantauError(ErrorCode.CHAIN_ID_REQUIRED, "transaction chain id is 0")
    check_chain_hint(chain_id, chain_hint)
    for name, value in (("nonce", tx.nonce), ("gas", tx.gas)):
        if value > _UINT64_MAX:
            raise LantauError(ErrorCode.INVALID_TRANSACTION, f"{name} is above 2**64-1")
    for name, value in (("chain id", chain_id), ("value", tx.value), (fee_line, gas_price)):
        _check_uint256(name, value)

    chain = f"eip155:{chain_id}"
    fee = tx.gas * gas_price
    facts = _Facts(sender)
    facts.line(f"chain {chain}, from {sender}, nonce {tx.nonce}")
    to = to_checksum_address(tx.to) if tx.to else None
    data = bytes(tx.data)
    if to is None:
        created = to_checksum_address(
            keccak(rlp.encode([bytes.fromhex(sender[2:]), tx.nonce]))[12:]
        )
        facts.call("unknown:contract_creation", unknown=True)
        facts.line(
            f"create a contract at {created} with {len(data)} bytes of init code: not decoded"
        )
        if tx.value:
            facts.move(
                NATIVE, tx.value, created, f"send {eth(tx.value)} to the new contract {created}"
            )
    else:
        if tx.value or not data:
            facts.call("native_transfer")
            facts.move(NATIVE, tx.value, to, f"send {eth(tx.value)} to {to}")
        if data:
            facts.contracts.append(to)
            _decode_call(facts, to, data)
    facts.line(f"max fee {eth(fee)} = gas limit {tx.gas} x {fee_line} {gas_price} wei")
    if isinstance(tx, _Unsigned1559) and tx.access_list:
        facts.line(f"access list of {len(tx.access_list)} address(es)")
    parsed = facts.parsed("evm_tx", chain, fee)
    return Decoded(parsed=parsed, signing_hash=keccak(signed_form), tx=tx)


def assemble(
    decoded: Decoded, public_key: bytes, signatures: list[tuple[bytes, int | None]]
) -> bytes:
    guards.check_signature_count(signatures, 1)
    sig, recid = signatures[0]
    guards.check_ecdsa(public_key, decoded.signing_hash, sig)
    y = guards.check_recovery_id(public_key, decoded.signing_hash, sig, recid)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    tx = decoded.tx
    if isinstance(tx, _Unsigned1559):
        return b"\x02" + rlp.encode(_Signed1559(*tx, y=y, r=r, s=s))
    # EIP-155: v = recovery id + 35 + 2 * chain id (the unsigned form carried the id in v).
    return bytes(rlp.encode(tx.copy(v=tx.v * 2 + 35 + y, r=r, s=s)))


class _Facts:
    """Accumulates movements, calls and summary lines in transaction order."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.movements: list[Movement] = []
        self.change: list[Movement] = []
        self.contracts: list[str] = []
        self.calls: list[str] = []
        self.lines: list[str] = []
        self.unknown = False

    def call(self, name: str, *, unknown: bool = False) -> None:
        self.calls.append(name)
        self.unknown = self.unknown or unknown

    def move(self, asset: str, amount: int, destination: str, line: str) -> None:
        m = Movement(asset=asset, amount=amount, destination=destination)
        if destination == self.sender:
            self.change.append(m)
            self.lines.append(f"{line} (this key's own address)")
        else:
            self.movements.append(m)
            self.lines.append(line)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def parsed(self, kind: str, chain: str, fee: int) -> ParsedTx:
        return ParsedTx(
            kind=kind,
            chain=chain,
            from_address=self.sender,
            movements=self.movements,
            change=self.change,
            fee=fee,
            fee_asset=NATIVE,
            contracts=self.contracts,
            calls=self.calls,
            unknown=self.unknown,
            summary=self.lines,
        )


def _decode_call(facts: _Facts, contract: str, data: bytes) -> None:
    selector = data[:4]
    name = _ERC20_CALLS.get(selector) if len(data) >= 4 else None
    if name is None:
        facts.call(f"unknown:0x{selector.hex()}", unknown=True)
        facts.line(
            f"call contract {contract} with unknown selector 0x{selector.hex()} "
            f"({len(data)} bytes of calldata): not decoded"
        )
        return
    if len(data) != 4 + 64:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION,
            f"{name} calldata must be 68 bytes (selector + address + uint256), got {len(data)}",
        )
    with guards.decoding(f"{name} calldata is not a valid ABI encoding"):
        target, amount = eth_abi.decode(["address", "uint256"], data[4:], strict=True)
    target = to_checksum_address(target)
    asset = f"erc20:{contract}"
    facts.call(name)
    if selector == TRANSFER:
        facts.move(asset, amount, target, f"send {amount} base units of {asset} to {target}")
    else:
        # An allowance moves nothing yet but lets the spender move up to `amount`:
        # reported as a movement so destination and amount rules apply to spenders.
        shown = "unlimited (2**256-1)" if amount == UINT256_MAX else str(amount)
        facts.move(
            asset,
            amount,
            target,
            f"approve {target} to spend up to {shown} base units of {asset}",
        )


def _check_uint256(name: str, value: int) -> None:
    if value > UINT256_MAX:
        raise LantauError(ErrorCode.INVALID_TRANSACTION, f"{name} is above 2**256-1")


def _already_signed() -> LantauError:
    return LantauError(
        ErrorCode.INVALID_TRANSACTION,
        "payload is an already-signed transaction: hand the unsigned transaction to sign",
    )
