"""Bitcoin PSBTs built with embit from real previous transactions; signatures in the
finalised transaction are checked with python-bitcoinlib's sighash and `cryptography`'s
ECDSA, a second implementation of BIP-143 and of the legacy sighash."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
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
from embit import ec, script
from embit.finalizer import finalize_psbt
from embit.networks import NETWORKS
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import SIGHASH, Transaction, TransactionOutput

from devkit.txcheck import verify_bitcoin_inputs
from devkit.txs import funding
from devkit.txs import psbt_of as build
from libs.chains import Movement, address_of, assemble, parse, signing_inputs
from libs.chains.model import MAX_ITEMS
from proto.errors import ErrorCode
from tests.chains.helpers import OTHER_SECRET, Secp, refused

KEY = Secp()
OTHER = Secp(OTHER_SECRET)
PUB = ec.PublicKey.parse(KEY.public)
OURS_W = script.p2wpkh(PUB)
OURS_L = script.p2pkh(PUB)
OTHER_W = script.p2wpkh(ec.PublicKey.parse(OTHER.public))
DEST = script.p2wpkh(ec.PrivateKey(b"\x22" * 32).get_public_key())
NET = "testnet"


def sign(payload: bytes, hint: str = NET) -> bytes:
    digests = signing_inputs("btc_psbt", payload, KEY.public, chain_hint=hint)
    return assemble("btc_psbt", payload, KEY.public, KEY.sign_all(digests), chain_hint=hint)


def verify_with_bitcoinlib(raw_tx: bytes, spent: Sequence[tuple[int, Script]]) -> None:
    """Every input's signature checked against python-bitcoinlib's sighash."""
    verify_bitcoin_inputs(raw_tx, [(value, spk.data) for value, spk in spent])


def test_p2wpkh_spend_with_change() -> None:
    prev = funding((100_000, OURS_W), (7, DEST))
    psbt = build([(prev, 0)], [(60_000, DEST), (39_000, OURS_W)])
    payload = psbt.serialize()
    p = parse("btc_psbt", payload, KEY.public, chain_hint=NET)
    me = address_of("bip122", KEY.public, chain_hint=NET)
    assert me.startswith("tb1q") and p.from_address == me
    assert p.chain == "bip122:testnet" and p.fee == 1_000 and p.fee_asset == "BTC"
    assert p.movements == [
        Movement(asset="BTC", amount=60_000, destination=DEST.address(NETWORKS["test"]))
    ]
    assert p.change == [Movement(asset="BTC", amount=39_000, destination=me)]
    assert p.calls == ["btc.spend"] and not p.unknown and p.contracts == []

    # Our sighash agrees with python-bitcoinlib's BIP-143 on the unsigned transaction.
    [digest] = signing_inputs("btc_psbt", payload, KEY.public, chain_hint=NET)
    unsigned = CTransaction.deserialize(psbt.tx.serialize())
    code = CScript([OP_DUP, OP_HASH160, Hash160(KEY.public), OP_EQUALVERIFY, OP_CHECKSIG])
    assert digest == SignatureHash(code, unsigned, 0, SIGHASH_ALL, 100_000, SIGVERSION_WITNESS_V0)

    signed = PSBT.parse(sign(payload))
    assert list(signed.inputs[0].partial_sigs) == [PUB]
    assert signed.inputs[0].partial_sigs[PUB][-1] == SIGHASH.ALL
    verify_with_bitcoinlib(finalize_psbt(signed).serialize(), [(100_000, OURS_W)])


def test_mixed_inputs_one_sighash_per_own_input_in_order() -> None:
    mine = funding((50_000, OURS_W), (30_000, OURS_L))
    theirs = funding((40_000, OTHER_W), salt=0xBB)
    spends = [(mine, 1), (theirs, 0), (mine, 0)]
    psbt = build(spends, [(110_000, DEST), (8_000, OURS_L)])
    psbt.inputs[1].non_witness_utxo = None  # another party's input: witness_utxo suffices
    payload = psbt.serialize()
    p = parse("btc_psbt", payload, KEY.public, chain_hint=NET)
    assert p.fee == 120_000 - 118_000
    assert [m.amount for m in p.change] == [8_000]
    assert p.from_address == OURS_L.address(NETWORKS["test"])
    digests = signing_inputs("btc_psbt", payload, KEY.public, chain_hint=NET)
    assert len(digests) == 2
    unsigned = CTransaction.deserialize(psbt.tx.serialize())
    assert digests[0] == SignatureHash(CScript(OURS_L.data), unsigned, 0, SIGHASH_ALL)

    signed = PSBT.parse(sign(payload))
    assert PUB in signed.inputs[0].partial_sigs and PUB in signed.inputs[2].partial_sigs
    assert not signed.inputs[1].partial_sigs
    # The other party co-signs its own input with embit, then everything is finalised.
    assert signed.sign_with(ec.PrivateKey(OTHER_SECRET)) == 1
    verify_with_bitcoinlib(
        finalize_psbt(signed).serialize(),
        [(30_000, OURS_L), (40_000, OTHER_W), (50_000, OURS_W)],
    )


@pytest.mark.parametrize(
    ("net", "prefix"), [("bitcoin", "bc1q"), ("bip122:regtest", "bcrt1q"), ("signet", "tb1q")]
)
def test_addresses_follow_the_network(net: str, prefix: str) -> None:
    prev = funding((10_000, OURS_W))
    payload = build([(prev, 0)], [(9_000, DEST)]).serialize()
    p = parse("btc_psbt", payload, KEY.public, chain_hint=net)
    assert p.from_address.startswith(prefix) and p.movements[0].destination.startswith(prefix)
    assert p.chain == "bip122:" + net.removeprefix("bip122:")


def test_op_return_and_non_standard_outputs() -> None:
    prev = funding((10_000, OURS_W))
    weird = Script(b"\x51\x52\x93")  # OP_1 OP_2 OP_ADD: no address form
    payload = build([(prev, 0)], [(0, Script(b"\x6a\x04abcd")), (5_000, weird)]).serialize()
    p = parse("btc_psbt", payload, KEY.public, chain_hint=NET)
    assert p.movements[0] == Movement(
        asset="BTC", amount=0, destination="op_return:04" + b"abcd".hex()
    )
    assert p.movements[1].destination == "script:515293"
    assert p.unknown and "unknown:script" in p.calls and "btc.op_return" in p.calls


def test_input_without_previous_transaction_is_not_proven() -> None:
    prev = funding((100_000, OURS_W))
    payload = build([(prev, 0)], [(90_000, DEST)], full=False).serialize()
    refused(ErrorCode.UTXO_NOT_PROVEN, parse, "btc_psbt", payload, KEY.public, chain_hint=NET)
    refused(ErrorCode.UTXO_NOT_PROVEN, sign, payload)


def test_input_without_any_utxo_cannot_be_valued() -> None:
    prev = funding((100_000, OURS_W))
    payload = build([(prev, 0)], [(90_000, DEST)], full=False, witness=False).serialize()
    refused(ErrorCode.UNSUPPORTED_INPUT, parse, "btc_psbt", payload, KEY.public, chain_hint=NET)


def test_previous_transaction_that_is_not_the_prevout_is_refused() -> None:
    prev = funding((100_000, OURS_W))
    impostor = funding((1_000_000, OURS_W), salt=0xCC)
    psbt = build([(prev, 0)], [(90_000, DEST)])
    psbt.inputs[0].non_witness_utxo = impostor
    psbt.inputs[0].witness_utxo = impostor.vout[0]
    refused(
        ErrorCode.UTXO_NOT_PROVEN, parse, "btc_psbt", psbt.serialize(), KEY.public, chain_hint=NET
    )


def test_lying_witness_amount_is_refused() -> None:
    # The BIP-143 fee attack: claim more than the output holds.
    prev = funding((100_000, OURS_W))
    psbt = build([(prev, 0)], [(190_000, DEST)])
    psbt.inputs[0].witness_utxo = TransactionOutput(200_000, OURS_W)
    err = refused(
        ErrorCode.AMOUNT_MISMATCH, parse, "btc_psbt", psbt.serialize(), KEY.public, chain_hint=NET
    )
    assert "200000" in err.message and "100000" in err.message


def test_foreign_input_with_wrong_previous_transaction_is_refused() -> None:
    mine = funding((100_000, OURS_W))
    theirs = funding((50_000, OTHER_W), salt=0xBB)
    psbt = build([(mine, 0), (theirs, 0)], [(140_000, DEST)])
    psbt.inputs[1].non_witness_utxo = mine
    refused(
        ErrorCode.UTXO_NOT_PROVEN, parse, "btc_psbt", psbt.serialize(), KEY.public, chain_hint=NET
    )


def _own_but_unsupported() -> list[tuple[str, PSBT]]:
    cases = []
    tr = script.p2tr(PUB)
    prev = funding((100_000, tr))
    psbt = build([(prev, 0)], [(90_000, DEST)])
    psbt.inputs[0].witness_utxo = prev.vout[0]
    psbt.inputs[0].taproot_internal_key = PUB
    cases.append(("taproot", psbt))
    nested = script.p2sh(OURS_W)
    prev = funding((100_000, nested))
    psbt = build([(prev, 0)], [(90_000, DEST)])
    psbt.inputs[0].redeem_script = OURS_W
    cases.append(("p2sh-p2wpkh", psbt))
    ms = script.multisig(2, [PUB, ec.PublicKey.parse(OTHER.public)])
    prev = funding((100_000, script.p2wsh(ms)))
    psbt = build([(prev, 0)], [(90_000, DEST)])
    psbt.inputs[0].witness_script = ms
    cases.append(("p2wsh-multisig", psbt))
    bare = Script(bytes([33]) + KEY.public + b"\xac")  # P2PK
    prev = funding((100_000, bare))
    cases.append(("p2pk", build([(prev, 0)], [(90_000, DEST)])))
    return cases


@pytest.mark.parametrize(
    ("name", "psbt"), _own_but_unsupported(), ids=[c[0] for c in _own_but_unsupported()]
)
def test_our_key_in_unsupported_scripts_is_refused(name: str, psbt: PSBT) -> None:
    refused(
        ErrorCode.UNSUPPORTED_INPUT, parse, "btc_psbt", psbt.serialize(), KEY.public, chain_hint=NET
    )


@pytest.mark.parametrize(
    "sighash", [SIGHASH.NONE, SIGHASH.SINGLE, SIGHASH.ALL | SIGHASH.ANYONECANPAY]
)
def test_other_sighash_types_are_refused(sighash: int) -> None:
    prev = funding((100_000, OURS_W))
    psbt = build([(prev, 0)], [(90_000, DEST)])
    psbt.inputs[0].sighash_type = sighash
    refused(
        ErrorCode.UNSUPPORTED_INPUT, parse, "btc_psbt", psbt.serialize(), KEY.public, chain_hint=NET
    )
    psbt.inputs[0].sighash_type = SIGHASH.ALL
    assert parse("btc_psbt", psbt.serialize(), KEY.public, chain_hint=NET).fee == 10_000


def test_psbt_without_our_inputs_is_not_ours() -> None:
    theirs = funding((50_000, OTHER_W))
    payload = build([(theirs, 0)], [(40_000, DEST)]).serialize()
    refused(ErrorCode.NOT_OUR_TRANSACTION, parse, "btc_psbt", payload, KEY.public, chain_hint=NET)


def test_outputs_above_inputs_and_double_spends_are_invalid() -> None:
    prev = funding((100_000, OURS_W), (5, OURS_W))
    over = build([(prev, 0)], [(100_001, DEST)]).serialize()
    refused(ErrorCode.INVALID_TRANSACTION, parse, "btc_psbt", over, KEY.public, chain_hint=NET)
    twice = build([(prev, 0), (prev, 0)], [(150_000, DEST)]).serialize()
    refused(ErrorCode.INVALID_TRANSACTION, parse, "btc_psbt", twice, KEY.public, chain_hint=NET)


@pytest.mark.parametrize("field", ["sequence", "version"])
def test_fields_embit_would_rewrite_are_refused(field: str) -> None:
    # embit reads nSequence 0 as 0xFFFFFFFF and version 0 as 2 (and writes them back
    # so): such a PSBT, as Bitcoin Core would write it, must be refused, not re-signed.
    prev = funding((100_000, OURS_W))
    psbt = build([(prev, 0)], [(90_000, DEST)], sequence=0xFFFFFFFF)
    as_embit_sees_it = psbt.tx.serialize()
    real = Transaction.parse(as_embit_sees_it)
    if field == "sequence":
        real.vin[0].sequence = 0
    else:
        real.version = 0
    payload = psbt.serialize().replace(as_embit_sees_it, real.serialize())
    assert payload != psbt.serialize()
    err = refused(
        ErrorCode.INVALID_TRANSACTION, parse, "btc_psbt", payload, KEY.public, chain_hint=NET
    )
    assert "not in the form this signer reproduces" in err.message


def test_too_many_outputs_or_bytes() -> None:
    prev = funding((10**8, OURS_W))
    many = build([(prev, 0)], [(1_000, DEST)] * (MAX_ITEMS + 1)).serialize()
    refused(ErrorCode.TRANSACTION_TOO_LARGE, parse, "btc_psbt", many, KEY.public, chain_hint=NET)
    big_prev = funding(*[(1_000, DEST)] * 2_500, (10**6, OURS_W))
    big = build([(big_prev, 2_500)], [(900_000, DEST)]).serialize()
    assert len(big) > 64 * 1024
    refused(ErrorCode.TRANSACTION_TOO_LARGE, parse, "btc_psbt", big, KEY.public, chain_hint=NET)


def test_malformed_payloads() -> None:
    prev = funding((100_000, OURS_W))
    good = build([(prev, 0)], [(90_000, DEST)])
    raw = good.serialize()
    for bad in (
        raw[:-3],
        raw[:20],
        b"psbt\xff",
        good.to_base64().encode(),
        b"\x00" * 40,
        raw + b"\x00",
    ):
        refused(ErrorCode.INVALID_TRANSACTION, parse, "btc_psbt", bad, KEY.public, chain_hint=NET)
        refused(
            ErrorCode.INVALID_TRANSACTION,
            assemble,
            "btc_psbt",
            bad,
            KEY.public,
            [(b"\x01" * 64, 0)],
            chain_hint=NET,
        )


def test_network_hint_required_and_known() -> None:
    prev = funding((100_000, OURS_W))
    payload = build([(prev, 0)], [(90_000, DEST)]).serialize()
    refused(ErrorCode.CHAIN_ID_REQUIRED, parse, "btc_psbt", payload, KEY.public)
    refused(ErrorCode.INVALID_FIELD, parse, "btc_psbt", payload, KEY.public, chain_hint="litecoin")
    refused(ErrorCode.INVALID_FIELD, parse, "btc_psbt", payload, KEY.public, chain_hint="bip122:")


def test_assemble_checks_every_signature() -> None:
    prev = funding((50_000, OURS_W), (50_000, OURS_W))
    payload = build([(prev, 0), (prev, 1)], [(90_000, DEST)]).serialize()
    d0, d1 = signing_inputs("btc_psbt", payload, KEY.public, chain_hint=NET)
    assert d0 != d1
    # Signatures swapped between inputs: each verifies, but not for its own input.
    refused(
        ErrorCode.SIGNATURE_VERIFICATION_FAILED,
        assemble,
        "btc_psbt",
        payload,
        KEY.public,
        [KEY.sign(d1), KEY.sign(d0)],
        chain_hint=NET,
    )
    refused(
        ErrorCode.SIGNATURE_VERIFICATION_FAILED,
        assemble,
        "btc_psbt",
        payload,
        KEY.public,
        [KEY.sign(d0), OTHER.sign(d1)],
        chain_hint=NET,
    )
    refused(
        ErrorCode.INVALID_FIELD,
        assemble,
        "btc_psbt",
        payload,
        KEY.public,
        [KEY.sign(d0)],
        chain_hint=NET,
    )


def test_v2_only_input_fields_in_a_v0_psbt_are_refused() -> None:
    # embit applies PSBT_IN_PREVIOUS_TXID/SEQUENCE (v2-only keys) over a v0 PSBT's
    # global transaction: what it would sign is then not what other tools see.
    prev = funding((100_000, OURS_W))
    impostor = funding((5_000_000, OURS_W), salt=0xCC)
    psbt = build([(prev, 0)], [(90_000, DEST)])
    psbt.inputs[0].non_witness_utxo = impostor
    psbt.inputs[0].witness_utxo = impostor.vout[0]
    # A fresh dict: embit's scopes share a mutable default `unknown={}`.
    psbt.inputs[0].unknown = {b"\x0e": bytes(reversed(impostor.txid()))}
    err = refused(
        ErrorCode.INVALID_TRANSACTION,
        parse,
        "btc_psbt",
        psbt.serialize(),
        KEY.public,
        chain_hint=NET,
    )
    assert "not in the form" in err.message
    overflow = build([(prev, 0)], [(90_000, DEST)])
    overflow.inputs[0].unknown = {b"\x10": b"\xff" * 5}
    refused(
        ErrorCode.INVALID_TRANSACTION,
        parse,
        "btc_psbt",
        overflow.serialize(),
        KEY.public,
        chain_hint=NET,
    )


def test_v2_only_output_fields_in_a_v0_psbt_are_refused() -> None:
    # PSBT_OUT_AMOUNT/SCRIPT would silently replace the global transaction's output.
    prev = funding((100_000, OURS_W))
    psbt = build([(prev, 0)], [(90_000, DEST)])
    psbt.outputs[0].unknown = {b"\x04": OURS_W.data}  # pretend the payment is change
    err = refused(
        ErrorCode.INVALID_TRANSACTION,
        parse,
        "btc_psbt",
        psbt.serialize(),
        KEY.public,
        chain_hint=NET,
    )
    assert "not in the form" in err.message
