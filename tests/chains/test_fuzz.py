"""Hostile bytes for every kind: parse returns facts or raises LantauError, nothing else.

Seeds are valid payloads from the per-chain tests; hypothesis mutates them (flip,
overwrite, insert, delete, truncate, splice) and also feeds raw random bytes. When a
mutant still parses, signing_inputs and assemble must work on it too.
"""

from __future__ import annotations

import json

import rlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.chains import ParsedTx, assemble, parse, signing_inputs, view_digest
from proto.errors import LantauError
from tests.chains import test_btc, test_eip712, test_evm, test_solana
from tests.chains.helpers import Ed, Secp

SECP, ED = Secp(), Ed()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seeds() -> dict[str, tuple[list[bytes], str | None]]:
    evm = [
        test_evm.unsigned(test_evm.tx1559()),
        test_evm.unsigned(test_evm.tx_legacy()),
        test_evm.unsigned(
            test_evm.tx1559(
                to=test_evm.TOKEN,
                value=0,
                data=test_evm.calldata("transfer(address,uint256)", test_evm.TO, 7),
            )
        ),
    ]
    typed = [test_eip712.enc(test_eip712.permit()), test_eip712.enc(test_eip712.MAIL)]
    prev = test_btc.funding((100_000, test_btc.OURS_W), (50_000, test_btc.OURS_L))
    theirs = test_btc.funding((40_000, test_btc.OTHER_W), salt=0xBB)
    btc = [
        test_btc.build(
            [(prev, 0)], [(90_000, test_btc.DEST), (9_000, test_btc.OURS_W)]
        ).serialize(),
        test_btc.build([(prev, 1), (theirs, 0), (prev, 0)], [(180_000, test_btc.DEST)]).serialize(),
    ]
    sol = [
        bytes(
            test_solana.legacy(
                test_solana.set_compute_unit_price(5), test_solana.send(), test_solana.checked()
            )
        ),
        test_solana.to_bytes_versioned(
            test_solana.MessageV0.try_compile(
                test_solana.ME, [test_solana.send(1)], [], test_solana.BLOCKHASH
            )
        ),
    ]
    return {
        "evm_tx": (evm, None),
        "evm_typed_data": (typed, None),
        "btc_psbt": (btc, "testnet"),
        "sol_message": (sol, "devnet"),
    }


SEEDS = _seeds()


@st.composite
def mutants(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            cut = draw(st.integers(0, len(other)))
            data[pos:] = other[cut:]
    return bytes(data)


def _key(kind: str) -> bytes:
    return ED.public if kind == "sol_message" else SECP.public


def _check(kind: str, payload: bytes, hint: str | None) -> None:
    key = _key(kind)
    try:
        parsed = parse(kind, payload, key, chain_hint=hint)
    except LantauError:
        return
    assert isinstance(parsed, ParsedTx)
    assert len(view_digest(parsed)) == 64
    inputs = signing_inputs(kind, payload, key, chain_hint=hint)
    if kind == "sol_message":
        sigs = [ED.sign(m) for m in inputs]
    else:
        assert all(len(d) == 32 for d in inputs)
        sigs = SECP.sign_all(inputs)
    out = assemble(kind, payload, key, sigs, chain_hint=hint)
    assert isinstance(out, bytes) and out


def _fuzz(kind: str):
    seeds, hint = SEEDS[kind]

    @FAST
    @given(payload=st.one_of(mutants(seeds), st.binary(max_size=600)))
    def run(payload: bytes) -> None:
        _check(kind, payload, hint)

    return run


test_fuzz_evm_tx = _fuzz("evm_tx")
test_fuzz_evm_typed_data = _fuzz("evm_typed_data")
test_fuzz_btc_psbt = _fuzz("btc_psbt")
test_fuzz_sol_message = _fuzz("sol_message")


_rlp_item = st.recursive(
    st.one_of(st.binary(max_size=40), st.integers(0, 2**300)),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(fields=st.lists(_rlp_item, min_size=0, max_size=13), typed=st.booleans())
def test_fuzz_evm_structured_rlp(fields: list[object], typed: bool) -> None:
    """Well-formed RLP with arbitrary field values and arities."""
    body = rlp.encode(fields)
    _check("evm_tx", (b"\x02" + body) if typed else body, None)


_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**260), 2**260),
        st.text(max_size=20),
        st.floats(allow_nan=False),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@FAST
@given(
    section=st.sampled_from(["message", "domain", "types", "primaryType"]),
    key=st.sampled_from(
        [
            "owner",
            "spender",
            "value",
            "nonce",
            "deadline",
            "chainId",
            "verifyingContract",
            "Permit",
            "EIP712Domain",
            "x",
        ]
    ),
    value=_json,
)
def test_fuzz_typed_data_values(section: str, key: str, value: object) -> None:
    """A valid permit with one value replaced by arbitrary JSON."""
    doc = test_eip712.permit()
    if isinstance(doc[section], dict):
        doc[section][key] = value
    else:
        doc[section] = value
    _check("evm_typed_data", json.dumps(doc).encode(), None)
