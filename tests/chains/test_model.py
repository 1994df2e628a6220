"""view_digest, address_of and the kind dispatch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
from eth_account import Account

from libs.chains import TX_KINDS, Movement, ParsedTx, address_of, parse, view_digest
from libs.chains.model import units
from proto.errors import ErrorCode
from tests.chains.helpers import Ed, Secp, refused

ROOT = Path(__file__).resolve().parents[2]


def sample() -> ParsedTx:
    return ParsedTx(
        kind="evm_tx",
        chain="eip155:1",
        from_address="0x" + "11" * 20,
        movements=[Movement(asset="erc20:0x" + "22" * 20, amount=2**200 + 1, destination="0xabc")],
        change=[Movement(asset="ETH", amount=5, destination="0x" + "11" * 20)],
        fee=21_000 * 10**10,
        fee_asset="ETH",
        contracts=["0x" + "22" * 20],
        calls=["erc20.transfer"],
        unknown=False,
        summary=['send ü ✓ <b> "quoted"', "line two"],
    )


def test_view_digest_is_sha256_of_sorted_canonical_json() -> None:
    p = sample()
    canonical = json.dumps(
        msgspec.to_builtins(p), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    expected = hashlib.sha256(b"lantau/chains/parsed-tx/v1\x00" + canonical).hexdigest()
    assert view_digest(p) == expected
    # Integers beyond 2**64 survive the round trip exactly.
    assert msgspec.json.decode(msgspec.json.encode(p), type=ParsedTx) == p


def test_view_digest_is_stable_across_processes() -> None:
    code = (
        "from tests.chains.test_model import sample\n"
        "from libs.chains import view_digest\n"
        "print(view_digest(sample()))\n"
    )
    outs = set()
    for seed in ("0", "1", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        run = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        outs.add(run.stdout.strip())
    assert outs == {view_digest(sample())}


def test_view_digest_changes_with_every_fact() -> None:
    p = sample()
    m = p.movements[0]
    variants = [
        msgspec.structs.replace(p, kind="evm_typed_data"),
        msgspec.structs.replace(p, chain="eip155:5"),
        msgspec.structs.replace(p, from_address="0x" + "12" * 20),
        msgspec.structs.replace(p, movements=[msgspec.structs.replace(m, amount=m.amount + 1)]),
        msgspec.structs.replace(p, movements=[msgspec.structs.replace(m, asset="ETH")]),
        msgspec.structs.replace(p, movements=[msgspec.structs.replace(m, destination="0xabd")]),
        msgspec.structs.replace(p, movements=[m, m]),
        msgspec.structs.replace(p, movements=[]),
        msgspec.structs.replace(p, change=[]),
        msgspec.structs.replace(p, movements=p.change, change=p.movements),
        msgspec.structs.replace(p, fee=p.fee + 1),
        msgspec.structs.replace(p, fee_asset="BTC"),
        msgspec.structs.replace(p, contracts=[]),
        msgspec.structs.replace(p, calls=["erc20.approve"]),
        msgspec.structs.replace(p, unknown=True),
        msgspec.structs.replace(p, summary=p.summary[::-1]),
        msgspec.structs.replace(p, summary=[*p.summary, ""]),
    ]
    digests = {view_digest(v) for v in variants}
    assert len(digests) == len(variants) and view_digest(p) not in digests


def test_units_renders_exact_decimals() -> None:
    assert units(1_500_000_000_000_000_000, 18) == "1.5"
    assert units(1, 8) == "0.00000001"
    assert units(0, 9) == "0"
    assert units(10**30 + 1, 18) == "1000000000000.000000000000000001"


def test_address_of_each_family() -> None:
    secp, ed = Secp(), Ed()
    assert address_of("eip155", secp.public) == Account.from_key(secp.secret).address
    assert address_of("bip122", secp.public, chain_hint="bitcoin").startswith("bc1q")
    assert address_of("solana", ed.public)
    refused(ErrorCode.CHAIN_ID_REQUIRED, address_of, "bip122", secp.public)
    refused(ErrorCode.INVALID_FIELD, address_of, "cosmos", secp.public)
    refused(ErrorCode.INVALID_FIELD, address_of, "eip155", ed.public)


def test_unknown_kind_and_non_bytes_payload() -> None:
    assert TX_KINDS == ("evm_tx", "evm_typed_data", "btc_psbt", "sol_message")
    refused(ErrorCode.INVALID_PAYLOAD, parse, "digest", b"\x00" * 32, Secp().public)
    refused(ErrorCode.INVALID_PAYLOAD, parse, "evm_tx", "0x02", Secp().public)
    refused(ErrorCode.INVALID_TRANSACTION, parse, "evm_tx", b"", Secp().public)
