"""Solana messages built with solders (and solana-py's SPL builders); signed transactions
verified by solders and PyNaCl, and compared byte for byte with solders' own signing."""

from __future__ import annotations

import math

import nacl.signing
import pytest
import spl.token.instructions as spl_ix
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import AccountMeta, CompiledInstruction, Instruction
from solders.keypair import Keypair
from solders.message import (
    Message,
    MessageAddressTableLookup,
    MessageHeader,
    MessageV0,
    to_bytes_versioned,
)
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import (
    AdvanceNonceAccountParams,
    TransferParams,
    advance_nonce_account,
    transfer,
)
from solders.transaction import Transaction, VersionedTransaction
from spl.token.constants import TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID
from spl.token.models import TransferCheckedParams
from spl.token.models import TransferParams as SplTransferParams

from libs.chains import Movement, address_of, assemble, parse, signing_inputs
from libs.chains.model import MAX_ITEMS
from proto.errors import ErrorCode
from tests.chains.helpers import Ed, refused

KEY = Ed()
KP = Keypair.from_seed(KEY.seed)
ME = KP.pubkey()
OTHER = Keypair.from_seed(b"\x09" * 32)
TO = Pubkey.from_string("9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin")
MINT = Pubkey.from_string("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v")
SRC = Pubkey.from_string("7UX2i7SucgLMQcfZ75s3VXmZZY4YRUyJN9X1RgfMoDUi")
DST = Pubkey.from_string("3PWvrYmDMcRrxmG7JRu3Ku1bMdw2XqnoNYbVw85QmPbE")
BLOCKHASH = Hash.from_string("4uQeVj5tqViQh7yWWGStvkEG1Zmhx6uasJtWCJziofM")
HINT = "solana:devnet"


def send(lamports: int = 1_000_000, source: Pubkey = ME, dest: Pubkey = TO) -> Instruction:
    return transfer(TransferParams(from_pubkey=source, to_pubkey=dest, lamports=lamports))


def checked(amount: int = 2_500_000, program: Pubkey = TOKEN_PROGRAM_ID) -> Instruction:
    return spl_ix.transfer_checked(
        TransferCheckedParams(
            program_id=program, source=SRC, mint=MINT, dest=DST, owner=ME, amount=amount, decimals=6
        )
    )


def legacy(*ixs: Instruction, payer: Pubkey = ME) -> Message:
    return Message.new_with_blockhash(list(ixs), payer, BLOCKHASH)


def sign(payload: bytes, hint: str = HINT) -> bytes:
    [message] = signing_inputs("sol_message", payload, KEY.public, chain_hint=hint)
    assert message == payload  # Ed25519 signs the message itself
    return assemble("sol_message", payload, KEY.public, [KEY.sign(message)], chain_hint=hint)


def test_transfers_and_budget_in_a_legacy_message() -> None:
    m = legacy(set_compute_unit_limit(300_000), set_compute_unit_price(1_000), send(), checked())
    payload = bytes(m)
    p = parse("sol_message", payload, KEY.public, chain_hint=HINT)
    assert p.chain == "solana:devnet" and p.from_address == str(ME)
    assert p.from_address == address_of("solana", KEY.public)
    assert p.movements == [
        Movement(asset="SOL", amount=1_000_000, destination=str(TO)),
        Movement(asset=f"spl:{MINT}", amount=2_500_000, destination=str(DST)),
    ]
    assert p.calls == [
        "compute_budget",
        "compute_budget",
        "system.transfer",
        "spl.transfer_checked",
    ]
    assert p.contracts == [
        "ComputeBudget111111111111111111111111111111",
        "11111111111111111111111111111111",
        str(TOKEN_PROGRAM_ID),
    ]
    assert p.fee == 5_000 + math.ceil(1_000 * 300_000 / 1_000_000) and p.fee_asset == "SOL"
    assert not p.unknown
    assert any("token account" in line and str(DST) in line for line in p.summary)

    raw = sign(payload)
    tx = Transaction.from_bytes(raw)
    tx.verify()  # solders: every signature against the message
    nacl.signing.VerifyKey(KEY.public).verify(bytes(tx.message), bytes(tx.signatures[0]))
    assert raw == bytes(Transaction([KP], m, BLOCKHASH))


def test_v0_message() -> None:
    m = MessageV0.try_compile(ME, [send(42), checked(program=TOKEN_2022_PROGRAM_ID)], [], BLOCKHASH)
    payload = to_bytes_versioned(m)
    p = parse("sol_message", payload, KEY.public, chain_hint=HINT)
    assert [x.amount for x in p.movements] == [42, 2_500_000]
    assert str(TOKEN_2022_PROGRAM_ID) in p.contracts
    assert p.fee == 5_000
    raw = sign(payload)
    vtx = VersionedTransaction.from_bytes(raw)
    assert vtx.verify_with_results() == [True]
    assert raw == bytes(VersionedTransaction(m, [KP]))


def test_price_without_limit_uses_the_default_limit_per_instruction() -> None:
    payload = bytes(legacy(set_compute_unit_price(10_000), send(), send(5, dest=DST)))
    p = parse("sol_message", payload, KEY.public, chain_hint=HINT)
    assert p.fee == 5_000 + math.ceil(10_000 * 2 * 200_000 / 1_000_000)


def test_co_signer_that_does_not_pay_the_fee() -> None:
    ix = send(7)
    payload = bytes(legacy(ix, payer=OTHER.pubkey()))
    p = parse("sol_message", payload, KEY.public, chain_hint=HINT)
    assert p.fee == 0 and p.movements == [Movement(asset="SOL", amount=7, destination=str(TO))]
    assert any("paid by" in line and str(OTHER.pubkey()) in line for line in p.summary)
    vtx = VersionedTransaction.from_bytes(sign(payload))
    # Partially signed: the fee payer's slot is still empty, ours verifies.
    assert vtx.signatures[0] == Signature.default()
    assert vtx.verify_with_results() == [False, True]


def test_transfer_of_someone_elses_funds_is_not_our_movement() -> None:
    payload = bytes(legacy(send(9, source=OTHER.pubkey())))
    p = parse("sol_message", payload, KEY.public, chain_hint=HINT)
    assert p.movements == [] and p.calls == ["system.transfer"]
    assert any("not this key's funds" in line for line in p.summary)


def test_transfer_to_self_is_change() -> None:
    p = parse("sol_message", bytes(legacy(send(3, dest=ME))), KEY.public, chain_hint=HINT)
    assert p.movements == [] and p.change == [Movement(asset="SOL", amount=3, destination=str(ME))]


def test_plain_spl_transfer_has_no_mint_so_is_unknown() -> None:
    ix = spl_ix.transfer(
        SplTransferParams(program_id=TOKEN_PROGRAM_ID, source=SRC, dest=DST, owner=ME, amount=5)
    )
    p = parse("sol_message", bytes(legacy(ix)), KEY.public, chain_hint=HINT)
    assert p.calls == ["spl.transfer"] and p.unknown
    assert p.movements == [Movement(asset="spl:unknown-mint", amount=5, destination=str(DST))]


def test_durable_nonce_advance_is_decoded() -> None:
    nonce = Pubkey.from_string("BPFLoaderUpgradeab1e11111111111111111111111")
    adv = advance_nonce_account(AdvanceNonceAccountParams(nonce_pubkey=nonce, authorized_pubkey=ME))
    p = parse("sol_message", bytes(legacy(adv, send())), KEY.public, chain_hint=HINT)
    assert p.calls == ["system.advance_nonce", "system.transfer"] and not p.unknown


def test_unknown_program_parses_as_unknown_and_still_signs() -> None:
    program = Pubkey.from_string("JUP6LkbZbjS1jKKwapdHNy74zcZ3tLUZoi5QNyVTaV4")
    ix = Instruction(program, b"\x01\x02\x03", [AccountMeta(ME, True, True)])
    payload = bytes(legacy(ix, send()))
    p = parse("sol_message", payload, KEY.public, chain_hint=HINT)
    assert p.unknown and p.calls == [f"unknown:{program}", "system.transfer"]
    assert str(program) in p.contracts
    Transaction.from_bytes(sign(payload)).verify()


def test_decoder_tolerated_extras_are_reported_unknown() -> None:
    # solders and spl decoders ignore trailing data; the runtime would run such an
    # instruction, so it is not claimed as decoded.
    base = send(11)
    padded = Instruction(base.program_id, bytes(base.data) + b"\x00", base.accounts)
    p = parse("sol_message", bytes(legacy(padded)), KEY.public, chain_hint=HINT)
    assert p.unknown and p.calls == ["unknown:11111111111111111111111111111111"]
    assert p.movements == []
    c = checked()
    padded = Instruction(c.program_id, bytes(c.data) + b"\xff", c.accounts)
    p = parse("sol_message", bytes(legacy(padded)), KEY.public, chain_hint=HINT)
    assert p.unknown and p.calls == [f"unknown:{TOKEN_PROGRAM_ID}"]


def test_too_few_accounts_do_not_reach_the_panicking_decoder(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # solders' decode_transfer panics (Rust backtrace on stderr) on one account.
    short = Instruction(send().program_id, bytes(send().data), [AccountMeta(ME, True, True)])
    p = parse("sol_message", bytes(legacy(short)), KEY.public, chain_hint=HINT)
    assert p.unknown and p.movements == []
    assert "panicked" not in capfd.readouterr().err


def test_lookup_table_accounts_are_unknown() -> None:
    header = MessageHeader(1, 0, 1)
    table = MessageAddressTableLookup(TO, bytes([0]), b"")
    # system transfer from us (index 0) to the first lookup-table account (index 2)
    ci = CompiledInstruction(1, bytes(send().data), bytes([0, 2]))
    m = MessageV0(
        header,
        [ME, Pubkey.from_string("11111111111111111111111111111111")],
        BLOCKHASH,
        [ci],
        [table],
    )
    p = parse("sol_message", to_bytes_versioned(m), KEY.public, chain_hint=HINT)
    assert p.unknown and p.movements == []
    assert any("lookup-table" in line for line in p.summary)


def test_not_a_signer_is_not_ours() -> None:
    payload = bytes(legacy(send(source=OTHER.pubkey(), dest=ME), payer=OTHER.pubkey()))
    refused(
        ErrorCode.NOT_OUR_TRANSACTION, parse, "sol_message", payload, KEY.public, chain_hint=HINT
    )
    elsewhere = bytes(legacy(send(source=OTHER.pubkey()), payer=OTHER.pubkey()))
    refused(
        ErrorCode.NOT_OUR_TRANSACTION, parse, "sol_message", elsewhere, KEY.public, chain_hint=HINT
    )


def _malformed() -> list[tuple[str, bytes]]:
    good = bytes(legacy(send()))
    bad_index = Message.new_with_compiled_instructions(
        1, 0, 1, [ME, TO], BLOCKHASH, [CompiledInstruction(9, b"", bytes([0]))]
    )
    dup_keys = Message.new_with_compiled_instructions(1, 0, 0, [ME, ME], BLOCKHASH, [])
    no_blockhash = Message.new_with_blockhash([send()], ME, Hash.default())
    return [
        ("empty-ish", b"\x01"),
        ("truncated", good[:-5]),
        ("trailing", good + b"\x00"),
        ("bad-index", bytes(bad_index)),
        ("duplicate-keys", bytes(dup_keys)),
        ("no-blockhash", bytes(no_blockhash)),
        ("bad-version", b"\x85" + good[1:]),
        ("twice-priced", bytes(legacy(set_compute_unit_price(1), set_compute_unit_price(2)))),
    ]


@pytest.mark.parametrize(("name", "payload"), _malformed(), ids=[c[0] for c in _malformed()])
def test_malformed_messages_are_invalid(name: str, payload: bytes) -> None:
    refused(
        ErrorCode.INVALID_TRANSACTION, parse, "sol_message", payload, KEY.public, chain_hint=HINT
    )
    refused(
        ErrorCode.INVALID_TRANSACTION,
        assemble,
        "sol_message",
        payload,
        KEY.public,
        [(b"\x00" * 64, None)],
        chain_hint=HINT,
    )


def test_too_many_instructions() -> None:
    ixs = [CompiledInstruction(1, b"", b"")] * (MAX_ITEMS + 1)
    m = Message.new_with_compiled_instructions(1, 0, 1, [ME, TO], BLOCKHASH, ixs)
    refused(
        ErrorCode.TRANSACTION_TOO_LARGE, parse, "sol_message", bytes(m), KEY.public, chain_hint=HINT
    )


def test_cluster_hint_required() -> None:
    payload = bytes(legacy(send()))
    refused(ErrorCode.CHAIN_ID_REQUIRED, parse, "sol_message", payload, KEY.public)
    assert parse("sol_message", payload, KEY.public, chain_hint="mainnet").chain == "solana:mainnet"
    refused(ErrorCode.INVALID_FIELD, parse, "sol_message", payload, KEY.public, chain_hint="a b")


def test_assemble_checks_the_signature() -> None:
    payload = bytes(legacy(send()))
    other = nacl.signing.SigningKey(b"\x09" * 32)
    for sig in (other.sign(payload).signature, KEY.sign(payload + b"x")[0], b"\x00" * 63):
        refused(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            assemble,
            "sol_message",
            payload,
            KEY.public,
            [(sig, None)],
            chain_hint=HINT,
        )
    refused(
        ErrorCode.INVALID_FIELD, parse, "sol_message", payload, KEY.public[:31], chain_hint=HINT
    )
