"""EIP-712 typed data: the UTF-8 JSON a dApp hands to ``eth_signTypedData_v4``.

The hash is eth-account's ``encode_typed_data``. The facts reported (chain id,
verifying contract, EIP-2612 permit fields) are re-encoded in their normalised form
and must hash to the same digest: what approvers read is provably what is signed,
whatever coercions the library applies to strings.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address, keccak, to_checksum_address, to_int

from libs.chains import evm, guards
from libs.chains.model import Movement, ParsedTx
from proto.errors import ErrorCode, LantauError

_TOP_KEYS = {"types", "domain", "primaryType", "message"}
# EIP-712's domain fields in the order the standard (and eth-account) encodes them;
# a document declaring another order or type would hash differently elsewhere.
_DOMAIN_FIELDS = [
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
    ("salt", "bytes32"),
]
_PERMIT_TYPE = [
    {"name": "owner", "type": "address"},
    {"name": "spender", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# eth-account re-derives a type's full dependency string for every struct instance it
# hashes, so work grows as instances x fields: a 48 KB document of 250 chained types
# took 16 s. Real documents (Permit, Permit2, Seaport) stay far below these bounds.
MAX_TYPES = 32
MAX_FIELDS = 256
MAX_JSON_VALUES = 1024


@dataclass(frozen=True)
class Decoded:
    parsed: ParsedTx
    signing_hash: bytes


def decode(payload: bytes, public_key: bytes, chain_hint: str | None) -> Decoded:
    guards.check_payload_size(payload)
    owner = evm.address(public_key)
    doc = _load(payload)
    domain, primary = doc["domain"], doc["primaryType"]
    _check_domain_types(doc["types"].get("EIP712Domain"))
    if "chainId" not in domain:
        raise LantauError(
            ErrorCode.CHAIN_ID_REQUIRED,
            "EIP-712 domain has no chainId: the signature could be replayed on any chain",
        )
    chain_id = domain["chainId"]
    if type(chain_id) is not int or not 0 < chain_id <= evm.UINT256_MAX:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, "EIP-712 domain.chainId must be a positive JSON integer"
        )
    evm.check_chain_hint(chain_id, chain_hint)
    contract = None
    if "verifyingContract" in domain:
        contract = _address(domain["verifyingContract"], "domain.verifyingContract")
    digest = _hash(doc)

    chain = f"eip155:{chain_id}"
    where = f"domain {_quote(domain.get('name'))} version {_quote(domain.get('version'))}"
    lines = [f"sign EIP-712 {primary} on chain {chain} for {owner}, {where}"]
    if contract is not None:
        lines.append(f"verifying contract {contract}")
    movements: list[Movement] = []
    if primary == "Permit" and doc["types"].get("Permit") == _PERMIT_TYPE and contract:
        movements, permit_lines = _permit(doc, owner, contract, digest)
        calls, unknown = ["eip712.permit"], False
        lines += permit_lines
    else:
        calls, unknown = [f"unknown:eip712:{primary}"], True
        lines.append(f"{primary} is not a decoded type: its effect is unknown")
    parsed = ParsedTx(
        kind="evm_typed_data",
        chain=chain,
        from_address=owner,
        movements=movements,
        change=[],
        fee=0,
        fee_asset=evm.NATIVE,
        contracts=[contract] if contract else [],
        calls=calls,
        unknown=unknown,
        summary=lines,
    )
    return Decoded(parsed=parsed, signing_hash=digest)


def assemble(
    decoded: Decoded, public_key: bytes, signatures: list[tuple[bytes, int | None]]
) -> bytes:
    """65-byte r||s||v with v = 27 + recovery id, as eth_signTypedData returns it."""
    guards.check_signature_count(signatures, 1)
    sig, recid = signatures[0]
    guards.check_ecdsa(public_key, decoded.signing_hash, sig)
    y = guards.check_recovery_id(public_key, decoded.signing_hash, sig, recid)
    return sig + bytes([27 + y])


def _load(payload: bytes) -> dict[str, Any]:
    with guards.decoding("EIP-712 payload is not UTF-8 JSON"):
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates)
    if not isinstance(doc, dict) or set(doc) != _TOP_KEYS:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION,
            "EIP-712 payload must be an object with exactly types, domain, primaryType, message",
        )
    types, domain, message = doc["types"], doc["domain"], doc["message"]
    if not (isinstance(types, dict) and isinstance(domain, dict) and isinstance(message, dict)):
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, "EIP-712 types, domain and message must be objects"
        )
    _bound("EIP-712 types", len(types), MAX_TYPES)
    _bound(
        "EIP-712 type fields",
        sum(len(f) for f in types.values() if isinstance(f, list)),
        MAX_FIELDS,
    )
    _bound("EIP-712 JSON values", _count_values(doc), MAX_JSON_VALUES)
    for name, fields in types.items():
        if not _TYPE_NAME.fullmatch(name) or not isinstance(fields, list):
            raise LantauError(
                ErrorCode.INVALID_TRANSACTION, "EIP-712 types must map type names to field lists"
            )
        for f in fields:
            if not (
                isinstance(f, dict)
                and set(f) == {"name", "type"}
                and isinstance(f["name"], str)
                and isinstance(f["type"], str)
            ):
                raise LantauError(
                    ErrorCode.INVALID_TRANSACTION,
                    f"EIP-712 type {name} has a field that is not {{name, type}} strings",
                )
    primary = doc["primaryType"]
    if not isinstance(primary, str) or not _TYPE_NAME.fullmatch(primary) or primary not in types:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, "EIP-712 primaryType must name one of the types"
        )
    return doc


def _bound(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise LantauError(
            ErrorCode.TRANSACTION_TOO_LARGE, f"{what}: {count}, more than the {limit} accepted"
        )


def _count_values(doc: Any) -> int:
    count, stack = 0, [doc]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_JSON_VALUES:
            break
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers picking different duplicates would show one thing and sign another.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise LantauError(ErrorCode.INVALID_TRANSACTION, f"EIP-712 JSON repeats key {k!r}")
        out[k] = v
    return out


def _check_domain_types(declared: Any) -> None:
    if declared is None:
        return
    pairs = [(f["name"], f["type"]) for f in declared]
    standard = [p for p in _DOMAIN_FIELDS if p in pairs]
    if pairs != standard:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION,
            "EIP712Domain must use the standard field names, types and order "
            "(name, version, chainId, verifyingContract, salt)",
        )


def _hash(doc: dict[str, Any]) -> bytes:
    # Imported here: eth-account takes ~0.5 s to import (py_ecc builds tables), which every
    # `lantau` command and SO ceremony step paid. Services that sign preload() it.
    from eth_account.messages import encode_typed_data

    with guards.decoding("EIP-712 typed data does not encode"):
        signable = encode_typed_data(full_message=doc)
        return bytes(keccak(b"\x19" + signable.version + signable.header + signable.body))


def _permit(
    doc: dict[str, Any], owner: str, contract: str, digest: bytes
) -> tuple[list[Movement], list[str]]:
    message = doc["message"]
    if set(message) != {f["name"] for f in _PERMIT_TYPE}:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION,
            "Permit message must have exactly owner, spender, value, nonce, deadline",
        )
    holder = _address(message["owner"], "Permit.owner")
    spender = _address(message["spender"], "Permit.spender")
    value, nonce, deadline = (
        _uint(message[k], f"Permit.{k}") for k in ("value", "nonce", "deadline")
    )
    normalised = dict(
        doc,
        message={
            "owner": holder,
            "spender": spender,
            "value": value,
            "nonce": nonce,
            "deadline": deadline,
        },
        domain=dict(doc["domain"], verifyingContract=contract),
    )
    if _hash(normalised) != digest:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, "Permit fields do not hash as they read: refusing"
        )
    if holder != owner:
        raise LantauError(
            ErrorCode.NOT_OUR_TRANSACTION,
            f"Permit owner {holder} is not this key's address {owner}",
        )
    asset = f"erc20:{contract}"
    shown = "unlimited (2**256-1)" if value == evm.UINT256_MAX else str(value)
    lines = [
        f"permit {spender} to spend up to {shown} base units of {asset}",
        f"permit nonce {nonce}, deadline {deadline} ({_when(deadline)})",
    ]
    return [Movement(asset=asset, amount=value, destination=spender)], lines


def _address(value: Any, field: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise LantauError(ErrorCode.INVALID_TRANSACTION, f"EIP-712 {field} is not an address")
    return str(to_checksum_address(value))


def _uint(value: Any, field: str) -> int:
    # The same coercions encode_field applies: int, "0x.." hex or decimal text.
    with guards.decoding(f"EIP-712 {field} is not an integer"):
        if isinstance(value, str):
            number = to_int(hexstr=value) if value.startswith(("0x", "0X")) else to_int(text=value)
        elif type(value) is int:
            number = value
        else:
            raise ValueError("not a number")
    if not 0 <= number <= evm.UINT256_MAX:
        raise LantauError(ErrorCode.INVALID_TRANSACTION, f"EIP-712 {field} is not a uint256")
    return int(number)


def _when(timestamp: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "far future"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _quote(value: Any) -> str:
    # Strings from the requester go into lines a human reads: quoted, escaped, bounded.
    return json.dumps(value if isinstance(value, str) else None)[:80]
