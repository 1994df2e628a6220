"""EIP-712 typed data: hashed by eth-account, signatures recovered by eth-account."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address

from devkit import txs
from devkit.txs import DOMAIN_TYPE, PERMIT_TYPE
from libs.chains import Movement, assemble, eip712, parse, signing_inputs
from proto.errors import ErrorCode
from tests.chains.helpers import OTHER_SECRET, Secp, refused

KEY = Secp()
ME = Account.from_key(KEY.secret).address
TOKEN = to_checksum_address("0x" + "ab" * 20)
SPENDER = to_checksum_address("0x" + "cd" * 20)


def permit(**message: Any) -> dict[str, Any]:
    doc = txs.permit(ME, TOKEN, SPENDER, 10**24, name="USD Coin")
    doc["message"].update(message)
    return doc


MAIL = {
    "types": {
        "EIP712Domain": DOMAIN_TYPE,
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person"},
            {"name": "contents", "type": "string"},
        ],
    },
    "primaryType": "Mail",
    "domain": {
        "name": "Ether Mail",
        "version": "1",
        "chainId": 1,
        "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
    },
    "message": {
        "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
        "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
        "contents": "Hello, Bob!",
    },
}


def enc(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_permit_is_decoded_and_signature_recovers_to_the_owner() -> None:
    doc = permit()
    payload = enc(doc)
    p = parse("evm_typed_data", payload, KEY.public)
    assert p.chain == "eip155:1" and p.from_address == ME
    assert p.calls == ["eip712.permit"] and not p.unknown
    assert p.contracts == [TOKEN]
    assert p.movements == [Movement(asset=f"erc20:{TOKEN}", amount=10**24, destination=SPENDER)]
    assert p.fee == 0
    assert any("deadline 1900000000" in line for line in p.summary)

    [digest] = signing_inputs("evm_typed_data", payload, KEY.public)
    sig65 = assemble("evm_typed_data", payload, KEY.public, KEY.sign_all([digest]))
    assert len(sig65) == 65 and sig65[64] in (27, 28)
    assert Account.recover_message(encode_typed_data(full_message=doc), signature=sig65) == ME
    assert sig65 == bytes(Account.sign_typed_data(KEY.secret, full_message=doc).signature)


def test_eip712_spec_mail_example_hash() -> None:
    # The EIP-712 reference example: its published digest.
    [digest] = signing_inputs("evm_typed_data", enc(MAIL), KEY.public)
    assert digest.hex() == "be609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"
    p = parse("evm_typed_data", enc(MAIL), KEY.public)
    assert p.unknown and p.calls == ["unknown:eip712:Mail"] and p.movements == []
    assert p.contracts == ["0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"]


def test_hex_string_amounts_read_as_the_library_hashes_them() -> None:
    p = parse("evm_typed_data", enc(permit(value="0x10", nonce="7")), KEY.public)
    assert p.movements[0].amount == 16
    assert any("nonce 7" in line for line in p.summary)


def test_permit_for_another_owner_is_not_ours() -> None:
    other = Account.from_key(OTHER_SECRET).address
    refused(
        ErrorCode.NOT_OUR_TRANSACTION, parse, "evm_typed_data", enc(permit(owner=other)), KEY.public
    )


def test_chain_id_required_and_checked() -> None:
    doc = permit()
    del doc["domain"]["chainId"]
    doc["types"]["EIP712Domain"] = [f for f in DOMAIN_TYPE if f["name"] != "chainId"]
    refused(ErrorCode.CHAIN_ID_REQUIRED, parse, "evm_typed_data", enc(doc), KEY.public)
    refused(
        ErrorCode.CHAIN_MISMATCH,
        parse,
        "evm_typed_data",
        enc(permit()),
        KEY.public,
        chain_hint="eip155:5",
    )
    assert (
        parse("evm_typed_data", enc(permit()), KEY.public, chain_hint="eip155:1").chain
        == "eip155:1"
    )
    bad = permit()
    bad["domain"]["chainId"] = "1"
    refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_typed_data", enc(bad), KEY.public)


def test_permit_with_a_non_standard_shape_is_unknown() -> None:
    doc = permit()
    doc["types"]["Permit"] = [*PERMIT_TYPE[:4], {"name": "expiry", "type": "uint256"}]
    doc["message"]["expiry"] = doc["message"].pop("deadline")
    p = parse("evm_typed_data", enc(doc), KEY.public)
    assert p.unknown and p.calls == ["unknown:eip712:Permit"] and p.movements == []


def hostile_docs() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    dup = enc(permit()).replace(b'"nonce": 0', b'"nonce": 0, "nonce": 5')
    cases.append(("duplicate-key", dup))
    cases.append(("not-json", b"{not json"))
    cases.append(("not-utf8", b"\xff\xfe"))
    cases.append(("array", b"[]"))
    extra = permit()
    extra["message"]["note"] = "ignored by the hash, shown by some wallets"
    cases.append(("extra-message-field", enc(extra)))
    reordered = permit()
    reordered["types"]["EIP712Domain"] = list(reversed(DOMAIN_TYPE))
    cases.append(("domain-order", enc(reordered)))
    retyped = permit()
    retyped["types"]["EIP712Domain"] = [
        *DOMAIN_TYPE[:2],
        {"name": "chainId", "type": "string"},
        DOMAIN_TYPE[3],
    ]
    cases.append(("domain-type", enc(retyped)))
    missing = copy.deepcopy(permit())
    del missing["primaryType"]
    cases.append(("no-primary-type", enc(missing)))
    wrong_primary = permit()
    wrong_primary["primaryType"] = "Nope"
    cases.append(("unknown-primary-type", enc(wrong_primary)))
    cases.append(("bad-owner", enc(permit(owner="0x1234"))))
    cases.append(("negative-value", enc(permit(value=-1))))
    cases.append(("float-value", enc(permit(value=1.5))))
    cases.append(("value-overflow", enc(permit(value=str(2**256)))))
    cycle = {
        "types": {"A": [{"name": "a", "type": "B"}], "B": [{"name": "b", "type": "A"}]},
        "primaryType": "A",
        "domain": {"chainId": 1},
        "message": {"a": {"b": {}}},
    }
    cases.append(("type-cycle", enc(cycle)))
    deep = b'{"types":' + b"[" * 5000 + b"]" * 5000 + b"}"
    cases.append(("deep-nesting", deep))
    return cases


@pytest.mark.parametrize(("name", "payload"), hostile_docs(), ids=[c[0] for c in hostile_docs()])
def test_hostile_typed_data_is_invalid(name: str, payload: bytes) -> None:
    refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_typed_data", payload, KEY.public)
    refused(
        ErrorCode.INVALID_TRANSACTION,
        assemble,
        "evm_typed_data",
        payload,
        KEY.public,
        [(b"\x01" * 64, 0)],
    )


def test_bad_signature_is_refused() -> None:
    payload = enc(permit())
    [digest] = signing_inputs("evm_typed_data", payload, KEY.public)
    refused(
        ErrorCode.SIGNATURE_VERIFICATION_FAILED,
        assemble,
        "evm_typed_data",
        payload,
        KEY.public,
        [Secp(OTHER_SECRET).sign(digest)],
    )


def test_documents_that_would_take_seconds_to_hash_are_refused() -> None:
    # eth-account re-derives the type string per struct instance: 250 chained types and
    # 13 000 empty instances (48 KB) took 16 s before these bounds.
    n = eip712.MAX_TYPES + 1
    types: dict[str, Any] = {f"T{i}": [{"name": "x", "type": f"T{i + 1}"}] for i in range(n)}
    types[f"T{n}"] = [{"name": "v", "type": "uint256"}]
    doc: dict[str, Any] = {
        "types": types,
        "primaryType": "T0",
        "domain": {"chainId": 1},
        "message": {},
    }
    refused(ErrorCode.TRANSACTION_TOO_LARGE, parse, "evm_typed_data", enc(doc), KEY.public)
    wide = {"P": [{"name": f"f{i}", "type": "string"} for i in range(eip712.MAX_FIELDS + 1)]}
    doc = {"types": wide, "primaryType": "P", "domain": {"chainId": 1}, "message": {}}
    refused(ErrorCode.TRANSACTION_TOO_LARGE, parse, "evm_typed_data", enc(doc), KEY.public)
    items = {"P": [{"name": "items", "type": "Q[]"}], "Q": [{"name": "q", "type": "string"}]}
    doc = {
        "types": items,
        "primaryType": "P",
        "domain": {"chainId": 1},
        "message": {"items": [{}] * eip712.MAX_JSON_VALUES},
    }
    refused(ErrorCode.TRANSACTION_TOO_LARGE, parse, "evm_typed_data", enc(doc), KEY.public)
    doc["message"]["items"] = [{}] * 100
    assert parse("evm_typed_data", enc(doc), KEY.public).unknown
