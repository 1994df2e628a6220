"""Rules on what transactions really do: the dev stack's policy judged on real transactions
(built by devkit/txs.py with each chain's library, parsed by libs/chains), pure calls.

tests/e2e/test_clear_signing.py sends the same kinds of transactions through the platform.
"""

from __future__ import annotations

import re
from pathlib import Path

import coincurve
import msgspec
import nacl.signing
import pytest
from solders.compute_budget import set_compute_unit_price
from solders.instruction import Instruction
from solders.pubkey import Pubkey
from spl.token.constants import TOKEN_2022_PROGRAM_ID

from devkit import demo_policy as demo
from devkit import txs
from devkit.txcheck import evm_address
from libs import chains
from libs.policy_file import Policy, canonical, parse
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest, Transfer
from services.policy import rules
from services.policy.facts import facts_of

SECP = coincurve.PrivateKey(b"\x11" * 32).public_key.format(compressed=True)
ED = bytes(nacl.signing.SigningKey(b"\x07" * 32).verify_key)
ME_EVM = evm_address(SECP)
NOW = 1_800_000_000_000


def demo_policy() -> Policy:
    approvers = "".join(
        f'[approvers.{n}]\npublic_key = "{i:02x}{"ab" * 31}"\n'
        for i, n in enumerate(demo.APPROVERS)
    )
    return parse(
        demo.TEMPLATE.format(
            sanctioned=demo.SANCTIONED,
            approvers=approvers,
            names=", ".join(f'"{n}"' for n in demo.APPROVERS),
            requesters='"desk-a"',
            large=demo.LARGE,
        )
    )


POLICY = demo_policy()


def judge(
    kind: str,
    payload: bytes,
    *,
    chain: str | None = None,
    transfer: Transfer | None = None,
    policy: Policy = POLICY,
) -> rules.Verdict:
    """What policy decides for this payload (or the typed refusal it raises)."""
    public = ED if kind == "sol_message" else SECP
    request = SignRequest(
        request_id="r-1",
        requester="desk-a",
        key_id="desk-a-key",
        payload=payload,
        payload_kind=kind,  # type: ignore[arg-type]
        chain=chain,
        transfer=transfer,
        created_at_ms=NOW,
        expires_at_ms=NOW + 60_000,
    )
    parsed = chains.parse(kind, payload, public, chain_hint=chain)
    facts = facts_of(request, parsed)
    rules.check_facts(policy, facts)
    return rules.evaluate(policy, request, NOW, {}, facts)


def refusal(code: ErrorCode, *args: object, **kwargs: object) -> str:
    with pytest.raises(LantauError) as info:
        judge(*args, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code, info.value
    return info.value.message


def btc(to: str, amount: int, **over: int) -> bytes:
    return txs.btc_spend(SECP, to, amount, **over).payload


def sol(*instructions: object) -> bytes:
    return txs.sol_message(ED, *instructions)  # type: ignore[arg-type]


def spl(program: object = None, amount: int = 2_500_000, mint: str = demo.MINT) -> object:
    extra = {"program": program} if program is not None else {}
    return txs.spl_send(
        ED,
        source=demo.COLD_SOL,
        mint=mint,
        dest=demo.COLD_SOL,
        amount=amount,
        decimals=6,
        **extra,
    )


ALLOWED = [
    ("eth", "evm_tx", txs.eth_transfer(demo.COLD_EVM, 5 * 10**16), None, "evm"),
    ("erc20", "evm_tx", txs.erc20_transfer(demo.TOKEN, demo.COLD_EVM, 1_500_000), None, "evm"),
    (
        "permit",
        "evm_typed_data",
        txs.typed_data(txs.permit(ME_EVM, demo.TOKEN, demo.COLD_EVM, 10**6)),
        None,
        "evm",
    ),
    ("sepolia", "evm_tx", txs.eth_transfer(demo.COLD_EVM, 1, chain_id=11155111), None, "evm"),
    ("psbt", "btc_psbt", btc(demo.COLD_BTC, 60_000), "testnet", "bitcoin"),
    ("sol", "sol_message", sol(txs.sol_send(ED, demo.COLD_SOL, 10**7)), "devnet", "solana"),
    ("spl", "sol_message", sol(spl()), "solana:devnet", "solana"),
]


@pytest.mark.parametrize(
    ("kind", "payload", "chain", "rule"), [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED]
)
def test_ordinary_transactions_of_each_chain_are_allowed(kind, payload, chain, rule) -> None:
    verdict = judge(kind, payload, chain=chain)
    assert (verdict.action, verdict.rule) == ("allow", rule), verdict.explanation


SANCTIONED = [
    ("evm", "evm_tx", txs.eth_transfer(demo.SANCTIONED, 10**15), None, demo.COLD_EVM, "ETH"),
    ("btc", "btc_psbt", btc(demo.SANCTIONED_BTC, 50_000), "testnet", demo.COLD_BTC, "BTC"),
    (
        "sol",
        "sol_message",
        sol(txs.sol_send(ED, demo.SANCTIONED_SOL, 10**6)),
        "devnet",
        demo.COLD_SOL,
        "SOL",
    ),
]


@pytest.mark.parametrize(
    ("kind", "payload", "chain", "cold", "asset"),
    [c[1:] for c in SANCTIONED],
    ids=[c[0] for c in SANCTIONED],
)
def test_a_parsed_sanctioned_destination_is_denied_whatever_is_declared(
    kind, payload, chain, cold, asset
) -> None:
    parsed = chains.parse(kind, payload, ED if kind == "sol_message" else SECP, chain_hint=chain)
    [moved] = parsed.movements
    # No declaration: the rule judges the parsed destination.
    verdict = judge(kind, payload, chain=chain)
    assert (verdict.action, verdict.rule) == ("deny", "no-sanctioned-destinations")
    assert "sanctions list" in verdict.explanation
    # A declaration naming the cold wallet is a lie: refused before any rule, naming
    # what the transaction really does.
    lie = Transfer(asset=asset, amount=moved.amount, destination=cold)
    message = refusal(ErrorCode.TRANSFER_MISMATCH, kind, payload, chain=chain, transfer=lie)
    assert moved.destination in message
    # The truth, declared, is judged like no declaration at all.
    truth = Transfer(asset=asset, amount=moved.amount, destination=moved.destination)
    assert judge(kind, payload, chain=chain, transfer=truth).rule == "no-sanctioned-destinations"


def test_declarations_compare_in_canonical_spelling() -> None:
    payload = txs.erc20_transfer(demo.TOKEN, demo.COLD_EVM, 7)
    lower = Transfer(asset=f"erc20:{demo.TOKEN.lower()}", amount=7, destination=demo.COLD_EVM)
    assert judge("evm_tx", payload, transfer=lower).action == "allow"
    for wrong in (
        Transfer(asset=f"erc20:{demo.TOKEN}", amount=8, destination=demo.COLD_EVM),
        Transfer(asset="ETH", amount=7, destination=demo.COLD_EVM),
        Transfer(asset=f"erc20:{demo.TOKEN}", amount=7, destination=demo.SANCTIONED),
    ):
        refusal(ErrorCode.TRANSFER_MISMATCH, "evm_tx", payload, transfer=wrong)


def test_canonical_spelling_folds_case_only_where_it_carries_no_meaning() -> None:
    assert canonical("0x000000000000000000000000000000000000dEaD") == demo.SANCTIONED
    assert canonical(f"erc20:{demo.TOKEN}") == f"erc20:{demo.TOKEN.lower()}"
    assert canonical(demo.COLD_BTC.upper()) == demo.COLD_BTC
    # Base58 (Solana, legacy Bitcoin) is case-sensitive: another case is another address.
    assert canonical(demo.COLD_SOL.swapcase()) == demo.COLD_SOL.swapcase()
    assert canonical("op_return:DEAD") == "op_return:DEAD"


def test_an_upper_case_bech32_list_entry_matches_the_decoded_address() -> None:
    lists = {**POLICY.file.address_lists, "sanctioned": [demo.SANCTIONED_BTC.upper()]}
    policy = Policy(msgspec.structs.replace(POLICY.file, address_lists=lists), "t#0")
    verdict = judge("btc_psbt", btc(demo.SANCTIONED_BTC, 50_000), chain="testnet", policy=policy)
    assert verdict.rule == "no-sanctioned-destinations"


def test_tokens_the_policy_does_not_know_are_refused() -> None:
    stranger = "0x" + "77" * 20
    payload = txs.erc20_transfer(stranger, demo.COLD_EVM, 1)
    assert "not known" in refusal(ErrorCode.UNKNOWN_ASSET, "evm_tx", payload)


def test_a_known_token_no_rule_lets_the_desk_move_is_denied_by_default() -> None:
    verdict = judge("evm_tx", txs.erc20_transfer(demo.OTHER_TOKEN, demo.COLD_EVM, 1))
    assert (verdict.action, verdict.rule) == ("deny", rules.DEFAULT_DENY)


def test_contract_allowlist_sends_undecoded_calls_to_people_or_denies_them() -> None:
    unknown = bytes.fromhex("23b872dd") + b"\x00" * 96  # transferFrom: not decoded
    ours = txs.unsigned_evm(txs.eip1559(demo.TOKEN, data=unknown, gas=80_000))
    held = judge("evm_tx", ours)
    assert (held.action, held.rule) == ("approve", "undecoded-calls-to-our-contracts")
    theirs = txs.unsigned_evm(txs.eip1559("0x" + "99" * 20, data=unknown, gas=80_000))
    assert judge("evm_tx", theirs).rule == rules.DEFAULT_DENY


def test_program_allowlist_and_unknown_programs() -> None:
    # Token-2022 is decoded, but not a program the desk may invoke.
    verdict = judge("sol_message", sol(spl(program=TOKEN_2022_PROGRAM_ID)), chain="devnet")
    assert verdict.rule == rules.DEFAULT_DENY
    # A program nobody decodes makes the transaction unknown: denied by default.
    program = Pubkey.from_string("83dHLTpaGaQzej6bkdro1yVjcGc7zTyK2MVNFirGTyXz")
    odd = Instruction(program, b"\x01\x02", [])
    verdict = judge("sol_message", sol(txs.sol_send(ED, demo.COLD_SOL, 1), odd), chain="devnet")
    assert verdict.rule == rules.DEFAULT_DENY


@pytest.mark.parametrize(
    ("kind", "payload", "chain", "rule"),
    [
        (
            "evm_tx",
            txs.eth_transfer(demo.COLD_EVM, 1, max_fee=1_000 * txs.GWEI),
            None,
            "evm-fee-cap",
        ),
        ("btc_psbt", btc(demo.COLD_BTC, 60_000, fee=200_000), "testnet", "btc-fee-cap"),
    ],
    ids=["evm", "btc"],
)
def test_fee_caps(kind, payload, chain, rule) -> None:
    verdict = judge(kind, payload, chain=chain)
    assert (verdict.action, verdict.rule) == ("deny", rule)
    assert "fee" in verdict.explanation


def test_wrong_chain_is_denied_and_a_disagreeing_hint_refused() -> None:
    bsc = txs.eth_transfer(demo.COLD_EVM, 1, chain_id=56)
    assert judge("evm_tx", bsc).rule == rules.DEFAULT_DENY
    refusal(ErrorCode.CHAIN_MISMATCH, "evm_tx", bsc, chain="eip155:1")
    regtest = btc(demo.COLD_BTC, 1_000)
    assert judge("btc_psbt", regtest, chain="bitcoin").rule == rules.DEFAULT_DENY


@pytest.mark.parametrize(
    ("kind", "payload", "chain", "rule"),
    [
        ("evm_tx", txs.eth_transfer(demo.COLD_EVM, 2 * 10**18), None, "large-eth"),
        ("btc_psbt", btc(demo.COLD_BTC, 5_000_000), "testnet", "large-btc"),
        (
            "evm_tx",
            txs.erc20_transfer(demo.TOKEN, demo.COLD_EVM, demo.LARGE_TOKEN + 1),
            None,
            "large-tokens",
        ),
    ],
    ids=["eth", "btc", "token"],
)
def test_large_decoded_transfers_need_approvers(kind, payload, chain, rule) -> None:
    verdict = judge(kind, payload, chain=chain)
    assert (verdict.action, verdict.rule, verdict.quorum) == ("approve", rule, 2)


def test_a_btc_spend_is_judged_without_its_change() -> None:
    # 0.009 BTC out, 0.5 BTC change: below the 0.01 BTC threshold.
    payload = btc(demo.COLD_BTC, 900_000, change=50_000_000)
    assert judge("btc_psbt", payload, chain="testnet").action == "allow"


def test_an_approve_rule_does_not_put_an_undecoded_call_before_people() -> None:
    # 2 ETH is above large-eth's threshold, but the calldata is not decoded and the
    # contract is not one the desk calls: no rule says unknown = true, so it is denied.
    payload = txs.unsigned_evm(
        txs.eip1559("0x" + "99" * 20, value=2 * 10**18, data=bytes.fromhex("12345678"), gas=90_000)
    )
    verdict = judge("evm_tx", payload)
    assert (verdict.action, verdict.rule) == ("deny", rules.DEFAULT_DENY)
    # A deny rule still matches it: the sanctions list applies to what is decoded of it.
    payload = txs.unsigned_evm(
        txs.eip1559(demo.SANCTIONED, value=1, data=bytes.fromhex("12345678"), gas=90_000)
    )
    assert judge("evm_tx", payload).rule == "no-sanctioned-destinations"


def test_an_undecoded_transaction_let_through_still_counts_in_velocity_windows() -> None:
    approver = f'[approvers.alice]\npublic_key = "{"ab" * 32}"\n'
    policy = parse(
        'version = "t"\n'
        + approver
        + '[groups.g]\napprovers = ["alice"]\napproves_for = ["desk-a"]\n'
        + '[[rules]]\nname = "eth-hourly"\nassets = ["ETH"]\naction = "approve"\n'
        + 'group = "g"\nquorum = 1\n'
        + 'velocity = { per = "key", window_s = 3600, max_amount = 1000 }\n'
        + '[[rules]]\nname = "odd-calls"\nunknown = true\naction = "allow"\n'
    )
    payload = txs.unsigned_evm(
        txs.eip1559(demo.COLD_EVM, value=7, data=bytes.fromhex("12345678"), gas=90_000)
    )
    verdict = judge("evm_tx", payload, policy=policy)
    assert (verdict.action, verdict.rule) == ("allow", "odd-calls")
    assert [(c.counter.split(".")[0], c.amount) for c in verdict.charges] == [("eth-hourly", 7)]


DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
USDC_SPL = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"


def documented() -> dict[str, Policy]:
    """Every policy file docs/policy.md shows, by version (placeholder keys made real)."""
    out = {}
    for text in re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S):
        text = re.sub(r'public_key = "[^"]*"', f'public_key = "{"ab" * 32}"', text)
        policy = parse(text)
        out[policy.file.version] = policy
    return out


def test_every_policy_file_in_the_docs_parses() -> None:
    assert set(documented()) >= {
        "2026-11-25.1",
        "assets-example",
        "evm-example",
        "bitcoin-example",
        "solana-example",
        "blind-example",
    }


def test_the_documented_evm_example_decides_as_the_docs_say() -> None:
    evm = documented()["evm-example"]
    allowed = judge("evm_tx", txs.erc20_transfer(USDC, demo.COLD_EVM, 10**6), policy=evm)
    assert allowed.rule == "mainnet-and-sepolia"
    bsc = txs.eth_transfer(demo.COLD_EVM, 1, chain_id=56)
    assert judge("evm_tx", bsc, policy=evm).rule == rules.DEFAULT_DENY

    def allowance(amount: int) -> bytes:
        data = txs.call("approve(address,uint256)", demo.COLD_EVM, amount)
        return txs.unsigned_evm(txs.eip1559(USDC, data=data))

    assert judge("evm_tx", allowance(2 * 10**12), policy=evm).rule == "large-allowances"
    assert judge("evm_tx", allowance(10**6), policy=evm).action == "allow"
    refusal(ErrorCode.AMOUNT_OUT_OF_RANGE, "evm_tx", allowance(2**256 - 1), policy=evm)
    router = "0x8Db089735311fF2679F633232C473Db73672bC28"
    swap = txs.unsigned_evm(txs.eip1559(router, data=bytes.fromhex("12345678"), gas=200_000))
    assert judge("evm_tx", swap, policy=evm).rule == "router-calls"
    greedy = txs.eth_transfer(demo.COLD_EVM, 1, max_fee=1_000 * txs.GWEI)
    assert judge("evm_tx", greedy, policy=evm).rule == "evm-fee-cap"
    permit = txs.permit(ME_EVM, USDC, demo.COLD_EVM, 10**6)
    assert judge("evm_typed_data", txs.typed_data(permit), policy=evm).action == "allow"


def test_the_documented_bitcoin_example_decides_as_the_docs_say() -> None:
    btc_policy = documented()["bitcoin-example"]
    cold = "bc1qpehjlvrussx258tayfjkgmakkaz6n7l54je95q"
    listed_upper = "bc1qe6wmg9v9d30r84swzsvd8d3xt2w9v7dt4u6wmx"
    for to in (cold, listed_upper):
        verdict = judge("btc_psbt", btc(to, 50_000), chain="bitcoin", policy=btc_policy)
        assert verdict.rule == "to-cold-only", to
    elsewhere = "bc1qmtlr7tmemgss5tvuu99w4rmnwlun3kjgemu8rt"
    assert judge("btc_psbt", btc(elsewhere, 1), chain="bitcoin", policy=btc_policy).rule == (
        rules.DEFAULT_DENY
    )
    costly = btc(cold, 50_000, fee=150_000)
    assert judge("btc_psbt", costly, chain="bitcoin", policy=btc_policy).rule == "btc-fee-cap"


def test_the_documented_solana_example_decides_as_the_docs_say() -> None:
    sol_policy = documented()["solana-example"]
    plain = sol(txs.sol_send(ED, demo.COLD_SOL, 10**6))
    assert judge("sol_message", plain, chain="mainnet", policy=sol_policy).rule == "solana"
    usdc = sol(spl(mint=USDC_SPL))
    assert judge("sol_message", usdc, chain="mainnet", policy=sol_policy).rule == "solana"
    t22 = sol(spl(program=TOKEN_2022_PROGRAM_ID, mint=USDC_SPL))
    assert judge("sol_message", t22, chain="mainnet", policy=sol_policy).rule == (
        rules.DEFAULT_DENY
    )
    rushed = sol(set_compute_unit_price(10**7), txs.sol_send(ED, demo.COLD_SOL, 1))
    assert judge("sol_message", rushed, chain="mainnet", policy=sol_policy).rule == "sol-fee-cap"
