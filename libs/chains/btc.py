"""Bitcoin PSBT (BIP-174, version 0) for a single key spending P2WPKH and P2PKH outputs.

Every input this key signs must carry its full previous transaction, whose txid is
checked against the prevout: a witness_utxo alone states an amount nobody proved,
and BIP-143 signatures over two lying amounts are the fee attack hardware wallets
closed in 2020. Sighashes are computed here from the proven amounts and scripts,
not from the PSBT's own hints about which inputs are segwit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from embit import ec, hashes
from embit.networks import NETWORKS
from embit.psbt import PSBT, InputScope, read_string
from embit.script import Script, p2pkh, p2pkh_from_p2wpkh, p2wpkh
from embit.transaction import SIGHASH, Transaction

from libs.chains import guards
from libs.chains.model import Movement, ParsedTx, units
from proto.errors import ErrorCode, LantauError

NATIVE = "BTC"  # on every network, testnets included
_NETWORK = {
    "bitcoin": "main",
    "testnet": "test",
    "testnet4": "test",
    "signet": "signet",
    "regtest": "regtest",
}
_MAX_MONEY = 21_000_000 * 100_000_000
_OP_RETURN = 0x6A


@dataclass(frozen=True)
class Decoded:
    parsed: ParsedTx
    sighashes: list[bytes]
    our_inputs: list[int]
    psbt: PSBT


def network_name(hint: str | None) -> str:
    name = guards.chain_reference(hint, "bip122")
    if name is None:
        raise LantauError(
            ErrorCode.CHAIN_ID_REQUIRED,
            "a PSBT does not say its network: pass chain_hint (bitcoin, testnet, signet, regtest)",
        )
    if name not in _NETWORK:
        raise LantauError(
            ErrorCode.INVALID_FIELD, f"unknown bitcoin network {name!r} in chain_hint"
        )
    return name


def address(public_key: bytes, network: str) -> str:
    """The key's P2WPKH (native segwit) address on ``network``."""
    guards.secp256k1_key(public_key)
    return str(p2wpkh(ec.PublicKey.parse(public_key)).address(NETWORKS[_NETWORK[network]]))


def sats(amount: int) -> str:
    return f"{units(amount, 8)} {NATIVE} ({amount} sat)"


def decode(payload: bytes, public_key: bytes, chain_hint: str | None) -> Decoded:
    guards.check_payload_size(payload)
    guards.secp256k1_key(public_key)
    network = network_name(chain_hint)
    params = NETWORKS[_NETWORK[network]]
    if not payload.startswith(PSBT.MAGIC):
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, "payload is not a binary PSBT (magic 'psbt\\xff')"
        )
    with guards.decoding("PSBT does not parse"):
        psbt = PSBT.parse(bytes(payload))
    if psbt.version not in (None, 0):
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, f"PSBT version {psbt.version} is not supported (only 0)"
        )
    with guards.decoding("PSBT unsigned transaction is not usable"):
        tx = psbt.tx
    guards.check_count("inputs", len(tx.vin), minimum=1)
    guards.check_count("outputs", len(tx.vout), minimum=1)
    _refuse_what_embit_rewrites(bytes(payload), tx)
    prevouts = {(vin.txid, vin.vout) for vin in tx.vin}
    if len(prevouts) != len(tx.vin):
        raise LantauError(ErrorCode.INVALID_TRANSACTION, "PSBT spends the same output twice")

    pub = ec.PublicKey.parse(public_key)
    ours = {p2wpkh(pub).data: "p2wpkh", p2pkh(pub).data: "p2pkh"}
    needles = (public_key, hashes.hash160(public_key), public_key[1:])
    total_in, our_inputs, sighashes = 0, [], []
    input_lines, our_scripts = [], []
    for i, inp in enumerate(psbt.inputs):
        value, spk = _prevout(i, inp, is_ours=lambda s: s.data in ours)
        kind = ours.get(spk.data)
        if kind is None:
            _refuse_if_ours_elsewhere(i, inp, spk, needles)
            proof = "previous transaction" if inp.non_witness_utxo else "witness_utxo, unproven"
            input_lines.append(f"input {i}: {sats(value)} from another signer ({proof})")
        else:
            if inp.sighash_type not in (None, SIGHASH.ALL):
                raise LantauError(
                    ErrorCode.UNSUPPORTED_INPUT,
                    f"input {i} asks for sighash type {inp.sighash_type}: "
                    "only SIGHASH_ALL is signed",
                )
            with guards.decoding(f"input {i} sighash"):
                if kind == "p2wpkh":
                    h = tx.sighash_segwit(i, p2pkh_from_p2wpkh(spk), value, SIGHASH.ALL)
                else:
                    h = tx.sighash_legacy(i, spk, SIGHASH.ALL)
            our_inputs.append(i)
            our_scripts.append(spk)
            sighashes.append(bytes(h))
            input_lines.append(f"input {i}: {sats(value)} from this key ({kind})")
        total_in += value
    if not our_inputs:
        raise LantauError(
            ErrorCode.NOT_OUR_TRANSACTION, "no PSBT input spends this key's P2WPKH or P2PKH output"
        )

    movements, change, calls, unknown, lines = [], [], ["btc.spend"], False, []
    total_out = 0
    for j, out in enumerate(tx.vout):
        if out.value > _MAX_MONEY:
            raise LantauError(ErrorCode.INVALID_TRANSACTION, f"output {j} exceeds 21 million BTC")
        total_out += out.value
        spk = out.script_pubkey
        if spk.data in ours:
            dest = _render(spk, params)
            change.append(Movement(asset=NATIVE, amount=out.value, destination=dest))
            lines.append(f"change {sats(out.value)} back to {dest} (this key)")
            continue
        if spk.data[:1] == bytes([_OP_RETURN]):
            dest = f"op_return:{spk.data[1:].hex()}"
            calls.append("btc.op_return")
            lines.append(f"data output (OP_RETURN) of {len(spk.data) - 1} bytes, {sats(out.value)}")
        elif spk.script_type() is None:
            dest = f"script:{spk.data.hex()}"
            calls.append("unknown:script")
            unknown = True
            lines.append(f"send {sats(out.value)} to a non-standard script: not decoded")
        else:
            dest = _render(spk, params)
            lines.append(f"send {sats(out.value)} to {dest}")
        movements.append(Movement(asset=NATIVE, amount=out.value, destination=dest))
    fee = total_in - total_out
    if fee < 0:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION,
            f"outputs ({total_out} sat) exceed inputs ({total_in} sat)",
        )
    from_address = _render(our_scripts[0], params)
    others = len(tx.vin) - len(our_inputs)
    head = [
        f"bitcoin network bip122:{network}, {len(tx.vin)} input(s), {len(our_inputs)} signed "
        f"by this key ({from_address}), {others} by others",
        *input_lines,
    ]
    tail = [
        f"fee {sats(fee)}",
        f"tx version {tx.version}, locktime {tx.locktime}",
    ]
    parsed = ParsedTx(
        kind="btc_psbt",
        chain=f"bip122:{network}",
        from_address=from_address,
        movements=movements,
        change=change,
        fee=fee,
        fee_asset=NATIVE,
        contracts=[],
        calls=calls,
        unknown=unknown,
        summary=head + lines + tail,
    )
    return Decoded(parsed=parsed, sighashes=sighashes, our_inputs=our_inputs, psbt=psbt)


def assemble(
    decoded: Decoded, public_key: bytes, signatures: list[tuple[bytes, int | None]]
) -> bytes:
    """The PSBT with this key's partial signature (DER + SIGHASH_ALL) on each of its inputs."""
    guards.check_signature_count(signatures, len(decoded.sighashes))
    ders = []
    for digest, (sig, _recid) in zip(decoded.sighashes, signatures, strict=True):
        guards.check_ecdsa(public_key, digest, sig)
        ders.append(_der(sig) + bytes([SIGHASH.ALL]))
    pub = ec.PublicKey.parse(public_key)
    for i, der in zip(decoded.our_inputs, ders, strict=True):
        decoded.psbt.inputs[i].partial_sigs[pub] = der
    return bytes(decoded.psbt.serialize())


def _refuse_what_embit_rewrites(payload: bytes, tx: Transaction) -> None:
    # embit rebuilds the unsigned transaction with `sequence or 0xFFFFFFFF` and
    # `version or 2` (and drops any scriptSig): a transaction with a 0 there would be
    # signed and serialised as something other than what other signers see. The
    # global unsigned transaction (key 0x00) must be exactly what embit rebuilt.
    stream = BytesIO(payload[len(PSBT.MAGIC) :])
    with guards.decoding("PSBT global map does not parse"):
        while key := read_string(stream):
            value = read_string(stream)
            if key == b"\x00":
                break
        else:
            raise ValueError("no unsigned transaction")
    with guards.decoding("PSBT input fields do not form a transaction"):
        rebuilt = tx.serialize()
    # Also catches v0 inputs carrying v2-only txid/vout/sequence keys (0x0e-0x10),
    # which embit would apply over the global transaction.
    if value != rebuilt:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION,
            "PSBT unsigned transaction is not in the form this signer reproduces "
            "(version 0, sequence 0 or a non-empty scriptSig are not supported)",
        )


def _prevout(i: int, inp: InputScope, *, is_ours: Callable[[Script], bool]) -> tuple[int, Script]:
    """(amount, scriptPubKey) of input ``i``, proven by its previous transaction where given."""
    full = inp.non_witness_utxo
    witness = inp.witness_utxo
    if full is not None:
        with guards.decoding(f"input {i} previous transaction"):
            txid = full.txid()
        if txid != inp.txid or not 0 <= inp.vout < len(full.vout):
            raise LantauError(
                ErrorCode.UTXO_NOT_PROVEN,
                f"input {i}: the previous transaction given is not the one its prevout names",
            )
        out = full.vout[inp.vout]
        if witness is not None and (
            witness.value != out.value or witness.script_pubkey.data != out.script_pubkey.data
        ):
            raise LantauError(
                ErrorCode.AMOUNT_MISMATCH,
                f"input {i}: witness_utxo ({witness.value} sat) disagrees with the previous "
                f"transaction ({out.value} sat)",
            )
    elif witness is not None:
        out = witness
        if is_ours(out.script_pubkey):
            raise LantauError(
                ErrorCode.UTXO_NOT_PROVEN,
                f"input {i} spends this key's output but carries no previous transaction "
                "(non_witness_utxo): its amount is unproven",
            )
    else:
        raise LantauError(
            ErrorCode.UNSUPPORTED_INPUT,
            f"input {i} has no UTXO data: its amount (and so the fee) cannot be known",
        )
    if out.value > _MAX_MONEY:
        raise LantauError(ErrorCode.INVALID_TRANSACTION, f"input {i} exceeds 21 million BTC")
    return int(out.value), out.script_pubkey


def _refuse_if_ours_elsewhere(
    i: int, inp: InputScope, spk: Script, needles: tuple[bytes, ...]
) -> None:
    """An input involving this key in any form but P2WPKH/P2PKH is one we cannot sign safely."""
    scripts = [spk, inp.redeem_script, inp.witness_script]
    blobs = [s.data for s in scripts if s is not None]
    blobs += [k.sec() for k in inp.bip32_derivations]
    blobs += [k.xonly() for k in inp.taproot_bip32_derivations]
    internal = inp.taproot_internal_key
    if internal is not None:
        blobs.append(internal.xonly())
    if any(n in b for b in blobs for n in needles):
        kind = spk.script_type() or "non-standard"
        raise LantauError(
            ErrorCode.UNSUPPORTED_INPUT,
            f"input {i} involves this key through a {kind} script (taproot, P2SH, multisig "
            "and bare keys are not signed); only P2WPKH and P2PKH are",
        )


def _render(spk: Script, params: dict[str, object]) -> str:
    with guards.decoding("output script has no address"):
        return str(spk.address(params))


def _der(compact: bytes) -> bytes:
    return encode_dss_signature(
        int.from_bytes(compact[:32], "big"), int.from_bytes(compact[32:], "big")
    )
