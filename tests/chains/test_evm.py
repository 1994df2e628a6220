"""EVM transactions: built and signed by eth-account as a wallet would, checked by it too."""

from __future__ import annotations

import pytest
import rlp
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils import to_checksum_address

from devkit.txs import call as calldata
from devkit.txs import unsigned_evm as unsigned
from libs.chains import Movement, assemble, parse, signing_inputs
from proto.errors import ErrorCode
from tests.chains.helpers import OTHER_SECRET, Secp, high_s, refused

KEY = Secp()
ME = Account.from_key(KEY.secret).address
TO = to_checksum_address("0x" + "5a" * 20)
TOKEN = to_checksum_address("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")
SPENDER = to_checksum_address("0x" + "c3" * 20)
GWEI = 10**9


def tx1559(**over: object) -> dict[str, object]:
    tx: dict[str, object] = {
        "type": 2,
        "chainId": 1,
        "nonce": 7,
        "to": TO,
        "value": 1_500_000_000_000_000_000,
        "gas": 21_000,
        "maxFeePerGas": 30 * GWEI,
        "maxPriorityFeePerGas": 2 * GWEI,
        "data": b"",
    }
    tx.update(over)
    return tx


def tx_legacy(**over: object) -> dict[str, object]:
    tx: dict[str, object] = {
        "chainId": 137,
        "nonce": 3,
        "to": TO,
        "value": 10**17,
        "gas": 21_000,
        "gasPrice": 50 * GWEI,
        "data": b"",
    }
    tx.update(over)
    return tx


def sign_and_assemble(payload: bytes, chain_hint: str | None = None) -> bytes:
    digests = signing_inputs("evm_tx", payload, KEY.public, chain_hint=chain_hint)
    return assemble("evm_tx", payload, KEY.public, KEY.sign_all(digests), chain_hint=chain_hint)


@pytest.mark.parametrize("builder", [tx1559, tx_legacy], ids=["eip1559", "legacy-eip155"])
def test_native_transfer_signs_what_eth_account_signs(builder) -> None:
    tx = builder()
    payload = unsigned(tx)
    p = parse("evm_tx", payload, KEY.public)
    assert p.chain == f"eip155:{tx['chainId']}"
    assert p.from_address == ME
    assert p.movements == [Movement(asset="ETH", amount=tx["value"], destination=TO)]
    assert p.change == [] and p.contracts == [] and not p.unknown
    assert p.calls == ["native_transfer"]
    price = tx.get("maxFeePerGas", tx.get("gasPrice"))
    assert p.fee == tx["gas"] * price
    assert p.fee_asset == "ETH"
    assert any(TO in line and str(tx["value"]) in line for line in p.summary)

    # The signing hash, computed independently by eth-account from the dict.
    if tx.get("type") == 2:
        expected = TypedTransaction.from_dict(tx).hash()
    else:
        from eth_account._utils.legacy_transactions import (
            serializable_unsigned_transaction_from_dict,
        )

        expected = serializable_unsigned_transaction_from_dict(tx).hash()
    assert signing_inputs("evm_tx", payload, KEY.public) == [bytes(expected)]

    raw = sign_and_assemble(payload)
    assert Account.recover_transaction(raw) == ME
    # RFC 6979 on both sides: byte-identical to what eth-account broadcasts.
    assert raw == bytes(Account.sign_transaction(tx, KEY.secret).raw_transaction)


def test_legacy_v_carries_the_chain_id() -> None:
    payload = unsigned(tx_legacy(chainId=56))
    raw = sign_and_assemble(payload)
    v = rlp.decode(raw)[6]
    assert int.from_bytes(v, "big") in (56 * 2 + 35, 56 * 2 + 36)
    assert Account.recover_transaction(raw) == ME


def test_erc20_transfer_decoded_with_amount_beyond_uint64() -> None:
    amount = 2**70 + 12345
    payload = unsigned(
        tx1559(
            to=TOKEN, value=0, gas=65_000, data=calldata("transfer(address,uint256)", TO, amount)
        )
    )
    p = parse("evm_tx", payload, KEY.public)
    assert p.movements == [Movement(asset=f"erc20:{TOKEN}", amount=amount, destination=TO)]
    assert p.calls == ["erc20.transfer"] and p.contracts == [TOKEN] and not p.unknown
    assert p.fee == 65_000 * 30 * GWEI
    assert Account.recover_transaction(sign_and_assemble(payload)) == ME


def test_erc20_approve_is_reported_as_a_movement_to_the_spender() -> None:
    payload = unsigned(
        tx1559(to=TOKEN, value=0, data=calldata("approve(address,uint256)", SPENDER, 2**256 - 1))
    )
    p = parse("evm_tx", payload, KEY.public)
    assert p.calls == ["erc20.approve"]
    assert p.movements == [Movement(asset=f"erc20:{TOKEN}", amount=2**256 - 1, destination=SPENDER)]
    assert any("unlimited" in line and SPENDER in line for line in p.summary)


def test_value_with_calldata_is_two_calls() -> None:
    payload = unsigned(tx1559(to=TOKEN, value=5, data=calldata("transfer(address,uint256)", TO, 9)))
    p = parse("evm_tx", payload, KEY.public)
    assert p.calls == ["native_transfer", "erc20.transfer"]
    assert p.movements == [
        Movement(asset="ETH", amount=5, destination=TOKEN),
        Movement(asset=f"erc20:{TOKEN}", amount=9, destination=TO),
    ]


def test_send_to_self_is_change() -> None:
    p = parse("evm_tx", unsigned(tx1559(to=ME)), KEY.public)
    assert p.movements == [] and p.change == [
        Movement(asset="ETH", amount=1_500_000_000_000_000_000, destination=ME)
    ]


def test_unknown_selector_parses_as_unknown_and_still_signs() -> None:
    payload = unsigned(tx1559(to=TOKEN, value=0, data=bytes.fromhex("deadbeef") + b"\x01" * 40))
    p = parse("evm_tx", payload, KEY.public)
    assert p.unknown and p.calls == ["unknown:0xdeadbeef"] and p.contracts == [TOKEN]
    assert p.movements == []
    assert Account.recover_transaction(sign_and_assemble(payload)) == ME


def test_contract_creation_is_unknown_and_its_value_goes_to_the_new_address() -> None:
    payload = unsigned(tx1559(to=b"", value=10, gas=500_000, data=b"\x60\x00\x60\x00"))
    p = parse("evm_tx", payload, KEY.public)
    assert p.unknown and p.calls == ["unknown:contract_creation"]
    [m] = p.movements
    assert m.amount == 10 and m.destination not in (ME, TO)
    assert m.destination == to_checksum_address(m.destination)


def test_chain_hint_must_agree() -> None:
    payload = unsigned(tx1559(chainId=10))
    assert parse("evm_tx", payload, KEY.public, chain_hint="eip155:10").chain == "eip155:10"
    assert parse("evm_tx", payload, KEY.public, chain_hint="10").chain == "eip155:10"
    refused(ErrorCode.CHAIN_MISMATCH, parse, "evm_tx", payload, KEY.public, chain_hint="eip155:1")
    refused(ErrorCode.CHAIN_MISMATCH, sign_and_assemble, payload, chain_hint="eip155:1")


def test_missing_chain_id_is_refused() -> None:
    pre155 = tx_legacy()
    del pre155["chainId"]
    refused(ErrorCode.CHAIN_ID_REQUIRED, parse, "evm_tx", unsigned(pre155), KEY.public)
    zero = b"\x02" + rlp.encode([0, *rlp.decode(unsigned(tx1559())[1:])[1:]])
    refused(ErrorCode.CHAIN_ID_REQUIRED, parse, "evm_tx", zero, KEY.public)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x02",
        b"\x02\xc5\x01",
        b"\x02" + rlp.encode([1, 2, 3]),
        b"\xf8\xff" + b"\x00" * 10,
        rlp.encode(b"not a list"),
        b"\x02" + rlp.encode([b"\x00\x01", *[b""] * 7, []]),  # leading zero: not canonical
    ],
    ids=["type-only", "truncated", "wrong-arity", "bad-length", "string", "non-canonical-int"],
)
def test_malformed_rlp_is_invalid(payload: bytes) -> None:
    refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", payload, KEY.public)
    refused(
        ErrorCode.INVALID_TRANSACTION, assemble, "evm_tx", payload, KEY.public, [(b"\x01" * 64, 0)]
    )


def test_trailing_bytes_are_invalid() -> None:
    refused(
        ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", unsigned(tx1559()) + b"\x00", KEY.public
    )


@pytest.mark.parametrize("type_byte", [0x01, 0x03, 0x04])
def test_other_transaction_types_are_refused(type_byte: int) -> None:
    payload = bytes([type_byte]) + unsigned(tx1559())[1:]
    err = refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", payload, KEY.public)
    assert "type" in err.message


def test_already_signed_transactions_are_refused_not_stripped() -> None:
    for tx in (tx1559(), tx_legacy()):
        raw = bytes(Account.sign_transaction(tx, KEY.secret).raw_transaction)
        err = refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", raw, KEY.public)
        assert "signed" in err.message


@pytest.mark.parametrize("cut", [1, 4, 40])
def test_truncated_or_padded_erc20_calldata_is_invalid(cut: int) -> None:
    data = calldata("transfer(address,uint256)", TO, 5)
    for bad in (data[:-cut], data + b"\x00" * cut):
        payload = unsigned(tx1559(to=TOKEN, value=0, data=bad))
        refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", payload, KEY.public)


def test_dirty_address_padding_is_invalid() -> None:
    data = bytearray(calldata("transfer(address,uint256)", TO, 5))
    data[4] = 0xFF  # high bytes of the address word must be zero
    payload = unsigned(tx1559(to=TOKEN, value=0, data=bytes(data)))
    refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", payload, KEY.public)


def test_priority_fee_above_max_fee_is_invalid() -> None:
    fields = rlp.decode(unsigned(tx1559())[1:])
    fields[2] = (10**12).to_bytes(5, "big")
    payload = b"\x02" + rlp.encode(fields)
    refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", payload, KEY.public)


def test_oversized_payload_is_refused() -> None:
    payload = unsigned(tx1559(to=TOKEN, data=b"\x01" * 70_000, gas=5_000_000))
    refused(ErrorCode.TRANSACTION_TOO_LARGE, parse, "evm_tx", payload, KEY.public)


def test_assemble_checks_every_signature() -> None:
    payload = unsigned(tx1559())
    [digest] = signing_inputs("evm_tx", payload, KEY.public)
    sig, recid = KEY.sign(digest)
    assert recid is not None
    bad = [
        [Secp(OTHER_SECRET).sign(digest)],  # another key
        [(sig, 1 - recid)],  # wrong recovery id
        [(high_s(sig), recid)],  # high S
        [(sig[:63], recid)],  # short
        [KEY.sign(b"\x00" * 32)],  # another digest
    ]
    for sigs in bad:
        refused(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED, assemble, "evm_tx", payload, KEY.public, sigs
        )
    refused(ErrorCode.INVALID_FIELD, assemble, "evm_tx", payload, KEY.public, [])
    refused(ErrorCode.INVALID_FIELD, assemble, "evm_tx", payload, KEY.public, [(sig, recid)] * 2)


def test_bad_public_key_is_refused() -> None:
    payload = unsigned(tx1559())
    for pk in (b"", KEY.public[:32], b"\x04" + KEY.public[1:], b"\x02" + b"\xff" * 32):
        refused(ErrorCode.INVALID_FIELD, parse, "evm_tx", payload, pk)
