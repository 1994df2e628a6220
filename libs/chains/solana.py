"""Solana messages (legacy and v0): the bytes Ed25519 signs, decoded with solders.

Every instruction we call decoded was re-encoded with the library's own builder
(solders for System and ComputeBudget, solana-py's spl for Token) and must give
back the same data and accounts; anything else, trailing bytes included, is
reported as unknown rather than trusted to a decoder that ignores what it does not
read. solders' decoders panic (a BaseException, with a Rust backtrace on stderr)
on too few accounts, so account counts are checked before any decoder runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import spl.token.instructions as spl_ix
from solders import compute_budget
from solders import system_program as system
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.message import Message, MessageV0, from_bytes_versioned, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction, VersionedTransaction
from spl.token.constants import TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID

from libs.chains import guards
from libs.chains.model import Movement, ParsedTx, units
from proto.errors import ErrorCode, LantauError

NATIVE = "SOL"
DECIMALS = 9
LAMPORTS_PER_SIGNATURE = 5000
# Runtime limits (agave compute-budget): the default limit per instruction and the cap.
DEFAULT_UNITS_PER_INSTRUCTION = 200_000
MAX_COMPUTE_UNITS = 1_400_000
UNKNOWN_MINT = "spl:unknown-mint"

_SYSTEM, _BUDGET = system.ID, compute_budget.ID
_TOKEN_PROGRAMS = {TOKEN_PROGRAM_ID: "Token", TOKEN_2022_PROGRAM_ID: "Token-2022"}
_SYSTEM_TRANSFER, _SYSTEM_ADVANCE_NONCE = 2, 4
_SPL_TRANSFER, _SPL_TRANSFER_CHECKED = 3, 12
_U32_BUDGET = {
    1: ("heap frame", compute_budget.request_heap_frame),
    2: ("unit limit", compute_budget.set_compute_unit_limit),
    4: ("loaded accounts data size", compute_budget.set_loaded_accounts_data_size_limit),
}
_SET_PRICE = 3


@dataclass(frozen=True)
class Decoded:
    parsed: ParsedTx
    message: Message | MessageV0
    signer_index: int
    payload: bytes


def cluster_name(hint: str | None) -> str:
    name = guards.chain_reference(hint, "solana")
    if name is None:
        raise LantauError(
            ErrorCode.CHAIN_ID_REQUIRED,
            "a Solana message does not say its cluster: pass chain_hint (e.g. solana:mainnet)",
        )
    return name


def address(public_key: bytes) -> str:
    return str(Pubkey.from_bytes(guards.ed25519_key(public_key)))


def sol(amount: int) -> str:
    return f"{units(amount, DECIMALS)} {NATIVE} ({amount} lamports)"


@dataclass
class _Facts:
    me: Pubkey
    movements: list[Movement] = field(default_factory=list)
    change: list[Movement] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    budget: dict[str, int] = field(default_factory=dict)
    unknown: bool = False


def decode(payload: bytes, public_key: bytes, chain_hint: str | None) -> Decoded:
    guards.check_payload_size(payload)
    me = Pubkey.from_bytes(guards.ed25519_key(public_key))
    cluster = cluster_name(chain_hint)
    message = _load(bytes(payload))
    keys = list(message.account_keys)
    header = message.header
    signers = keys[: header.num_required_signatures]
    if me not in signers:
        raise LantauError(
            ErrorCode.NOT_OUR_TRANSACTION,
            f"{me} is not among the message's required signers",
        )
    guards.check_count("instructions", len(message.instructions))

    facts = _Facts(me)
    programs: list[str] = []
    for ci in message.instructions:
        program = keys[ci.program_id_index]
        if str(program) not in programs:
            programs.append(str(program))
        # v0 accounts past the static keys come from lookup tables: not knowable here.
        accounts = [keys[i] if i < len(keys) else None for i in ci.accounts]
        _instruction(facts, program, accounts, bytes(ci.data))

    payer = keys[0]
    counted = sum(1 for ci in message.instructions if keys[ci.program_id_index] != _BUDGET)
    limit = facts.budget.get("unit limit", DEFAULT_UNITS_PER_INSTRUCTION * counted)
    limit = min(limit, MAX_COMPUTE_UNITS)
    price = facts.budget.get("price", 0)
    priority = math.ceil(price * limit / 1_000_000)
    total_fee = LAMPORTS_PER_SIGNATURE * len(signers) + priority
    fee_line = (
        f"fee at most {sol(total_fee)}: {len(signers)} signature(s) x {LAMPORTS_PER_SIGNATURE}"
        f" + priority {priority} ({price} micro-lamports/CU x {limit} CU)"
    )
    if payer == me:
        fee = total_fee
    else:
        fee = 0
        fee_line += f", paid by {payer}, not this key"
    version = "v0" if isinstance(message, MessageV0) else "legacy"
    head = [
        f"solana cluster solana:{cluster}, {version} message, fee payer {payer}"
        + (" (this key)" if payer == me else ""),
        f"{len(signers)} required signer(s), this key {me} is signer {signers.index(me)}",
    ]
    if isinstance(message, MessageV0) and message.address_table_lookups:
        head.append(f"{len(message.address_table_lookups)} address lookup table(s) used")
    tail = [fee_line, f"recent blockhash {message.recent_blockhash}"]
    parsed = ParsedTx(
        kind="sol_message",
        chain=f"solana:{cluster}",
        from_address=str(me),
        movements=facts.movements,
        change=facts.change,
        fee=fee,
        fee_asset=NATIVE,
        contracts=programs,
        calls=facts.calls,
        unknown=facts.unknown,
        summary=head + facts.lines + tail,
    )
    return Decoded(
        parsed=parsed, message=message, signer_index=signers.index(me), payload=bytes(payload)
    )


def assemble(
    decoded: Decoded, public_key: bytes, signatures: list[tuple[bytes, int | None]]
) -> bytes:
    """Wire-format transaction; other required signers' slots stay zero (partially signed)."""
    guards.check_signature_count(signatures, 1)
    sig = signatures[0][0]
    guards.check_ed25519(public_key, decoded.payload, sig)
    message = decoded.message
    slots = [Signature.default()] * message.header.num_required_signatures
    slots[decoded.signer_index] = Signature.from_bytes(sig)
    if isinstance(message, MessageV0):
        return bytes(VersionedTransaction.populate(message, slots))
    return bytes(Transaction.populate(message, slots))


def _load(payload: bytes) -> Message | MessageV0:
    with guards.decoding("Solana message does not parse"):
        message = from_bytes_versioned(payload)
    if not isinstance(message, Message | MessageV0):
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, "only legacy and v0 Solana messages are supported"
        )
    # solders ignores trailing bytes; the signature covers exactly the payload.
    if to_bytes_versioned(message) != payload:
        raise LantauError(
            ErrorCode.INVALID_TRANSACTION, "Solana message has trailing or non-canonical bytes"
        )
    with guards.decoding("Solana message is not well formed"):
        if isinstance(message, MessageV0):
            message.sanitize()
        else:
            Transaction.new_unsigned(message).sanitize()
    keys = list(message.account_keys)
    if len(set(keys)) != len(keys):
        raise LantauError(ErrorCode.INVALID_TRANSACTION, "Solana message repeats an account key")
    if message.header.num_required_signatures == 0:
        raise LantauError(ErrorCode.INVALID_TRANSACTION, "Solana message has no signer")
    if message.recent_blockhash == Hash.default():
        raise LantauError(ErrorCode.INVALID_TRANSACTION, "Solana message has no recent blockhash")
    return message


def _instruction(
    facts: _Facts, program: Pubkey, accounts: Sequence[Pubkey | None], data: bytes
) -> None:
    known = None not in accounts
    done = False
    if known and program == _SYSTEM:
        done = _system(facts, [a for a in accounts if a is not None], data)
    elif program == _BUDGET:
        done = _budget(facts, data)
    elif known and program in _TOKEN_PROGRAMS:
        done = _token(facts, program, [a for a in accounts if a is not None], data)
    if not done:
        facts.calls.append(f"unknown:{program}")
        facts.unknown = True
        why = "" if known else " (uses lookup-table accounts)"
        facts.lines.append(f"call program {program} ({len(data)} bytes of data){why}: not decoded")


def _same(built: Instruction, program: Pubkey, accounts: Sequence[Pubkey], data: bytes) -> bool:
    return (
        built.program_id == program
        and bytes(built.data) == data
        and [m.pubkey for m in built.accounts] == list(accounts)
    )


def _metas(accounts: Sequence[Pubkey]) -> list[AccountMeta]:
    return [AccountMeta(a, is_signer=False, is_writable=False) for a in accounts]


def _system(facts: _Facts, accounts: list[Pubkey], data: bytes) -> bool:
    tag = int.from_bytes(data[:4], "little") if len(data) >= 4 else None
    if tag == _SYSTEM_TRANSFER and len(data) == 12 and len(accounts) == 2:
        with guards.decoding("system transfer"):
            p = system.decode_transfer(Instruction(_SYSTEM, data, _metas(accounts)))
        if not _same(system.transfer(p), _SYSTEM, accounts, data):
            return False
        source, dest, amount = p["from_pubkey"], p["to_pubkey"], p["lamports"]
        facts.calls.append("system.transfer")
        _move(facts, NATIVE, amount, source, source, dest, f"send {sol(amount)} to {dest}")
        return True
    if tag == _SYSTEM_ADVANCE_NONCE and len(data) == 4 and len(accounts) == 3:
        with guards.decoding("system advance nonce"):
            n = system.decode_advance_nonce_account(Instruction(_SYSTEM, data, _metas(accounts)))
        if not _same(system.advance_nonce_account(n), _SYSTEM, accounts, data):
            return False
        facts.calls.append("system.advance_nonce")
        facts.lines.append(
            f"advance durable nonce {n['nonce_pubkey']} (authority {n['authorized_pubkey']})"
        )
        return True
    return False


def _budget(facts: _Facts, data: bytes) -> bool:
    if not data:
        return False
    tag = data[0]
    if tag == _SET_PRICE and len(data) == 9:
        what, value = "price", int.from_bytes(data[1:], "little")
        built = compute_budget.set_compute_unit_price(value)
        line = f"compute unit price {value} micro-lamports"
    elif tag in _U32_BUDGET and len(data) == 5:
        what, builder = _U32_BUDGET[tag]
        value = int.from_bytes(data[1:], "little")
        built = builder(value)
        line = f"compute budget {what} {value}"
    else:
        return False
    if bytes(built.data) != data:
        return False
    if what in facts.budget:
        # The runtime refuses the whole transaction for a repeated budget instruction.
        raise LantauError(ErrorCode.INVALID_TRANSACTION, f"ComputeBudget {what} is set twice")
    facts.budget[what] = value
    facts.calls.append("compute_budget")
    facts.lines.append(line)
    return True


def _token(facts: _Facts, program: Pubkey, accounts: list[Pubkey], data: bytes) -> bool:
    name = _TOKEN_PROGRAMS[program]
    tag = data[0] if data else None
    metas = _metas(accounts)
    decimals: int | None = None
    if tag == _SPL_TRANSFER and len(accounts) >= 3:
        with guards.decoding(f"{name} transfer"):
            t = spl_ix.decode_transfer(Instruction(program, data, metas))
            built = spl_ix.transfer(t)
        source, dest, owner, signers, amount = t.source, t.dest, t.owner, t.signers, t.amount
        # A plain transfer does not name its mint: which token moves is unknown here.
        asset, call = UNKNOWN_MINT, "spl.transfer"
    elif tag == _SPL_TRANSFER_CHECKED and len(accounts) >= 4:
        with guards.decoding(f"{name} transferChecked"):
            c = spl_ix.decode_transfer_checked(Instruction(program, data, metas))
            built = spl_ix.transfer_checked(c)
        source, dest, owner, signers, amount = c.source, c.dest, c.owner, c.signers, c.amount
        asset, call, decimals = f"spl:{c.mint}", "spl.transfer_checked", c.decimals
    else:
        return False
    if not _same(built, program, accounts, data):
        return False
    facts.calls.append(call)
    if decimals is None:
        facts.unknown = True
        shown = f"{amount} base units of {asset} (mint not stated: use transferChecked)"
    else:
        shown = f"{amount} base units ({units(amount, decimals)} at {decimals} decimals) of {asset}"
    line = (
        f"send {shown} via {name} from token account {source} to token account {dest}"
        " (a token account, not a wallet address)"
    )
    mine = facts.me == owner or facts.me in signers
    _move(facts, asset, amount, facts.me if mine else owner, owner, dest, line)
    return True


def _move(
    facts: _Facts,
    asset: str,
    amount: int,
    source: Pubkey,
    authority: Pubkey,
    dest: Pubkey,
    line: str,
) -> None:
    """A transfer is this key's movement when this key is its source or authority."""
    if source != facts.me:
        facts.lines.append(f"{line}; authorised by {authority}, not this key's funds")
        return
    m = Movement(asset=asset, amount=amount, destination=str(dest))
    if dest == facts.me:
        facts.change.append(m)
        facts.lines.append(f"{line} (this key itself)")
    else:
        facts.movements.append(m)
        facts.lines.append(line)
