"""What ``lantau approvals list`` shows an approver, and when it refuses to trust it: the
held transaction is decoded again by the command itself (pure calls, real transactions)."""

from __future__ import annotations

import hashlib

import coincurve
import msgspec

from devkit import demo_policy as demo
from devkit import txs
from libs import chains
from proto import codec
from proto.approvals import PendingApproval, payload_sha256
from proto.requests import SignRequest, Transfer
from services.cli.approvals_cmd import describe, review

PUB = coincurve.PrivateKey(b"\x11" * 32).public_key.format(compressed=True)
NOW = 1_800_000_000_000


def held(
    payload: bytes, kind: str = "btc_psbt", chain: str | None = "testnet", **over: object
) -> PendingApproval:
    request = SignRequest(
        request_id="r-1",
        requester="desk-a",
        key_id="desk-a-btc",
        payload=payload,
        payload_kind=kind,  # type: ignore[arg-type]
        chain=chain,
        transfer=over.pop("transfer", None),  # type: ignore[arg-type]
        created_at_ms=NOW,
        expires_at_ms=NOW + 60_000,
    )
    view, digest = [f"blind {kind} of {len(payload)} bytes"], ""
    if kind in chains.TX_KINDS:
        parsed = chains.parse(kind, payload, PUB, chain_hint=chain)
        view, digest = parsed.summary, chains.view_digest(parsed)
    pending = PendingApproval(
        request_id="r-1",
        requester="desk-a",
        key_id="desk-a-btc",
        payload_sha256=payload_sha256(payload),
        view=view,
        view_sha256=digest,
        rule="large-btc",
        group="treasury",
        quorum=2,
        eligible=["alice", "bob", "carol"],
        policy_version="dev-1#0",
        created_at_ms=NOW,
        expires_at_ms=NOW + 600_000,
        request=codec.encode(request),
    )
    return msgspec.structs.replace(pending, **over)


def test_the_listing_shows_the_decoded_transaction_and_its_view_digest() -> None:
    spend = txs.btc_spend(PUB, demo.COLD_BTC, 5_000_000, fee=1_500)
    p = held(spend.payload)
    seen = review(p, PUB)
    assert not seen.problem and seen.view_sha256 == p.view_sha256
    text = describe(p, NOW, seen)
    for needle in (
        "what will be signed (btc_psbt, decoded)",
        "bip122:testnet",
        f"send 0.05 BTC (5000000 sat) to {demo.COLD_BTC}",
        "change 0.0004 BTC",
        "fee 0.000015 BTC (1500 sat)",
        f"view sha256 {p.view_sha256} (decoded again here: the same)",
        f"payload sha256 {p.payload_sha256}",
        "needs 2 of group 'treasury'",
        "[pending, 600 s left]",
    ):
        assert needle in text, needle
    assert "WARNING" not in text


def test_an_erc20_transfer_shows_token_and_fee() -> None:
    payload = txs.erc20_transfer(demo.TOKEN, demo.COLD_EVM, 25_000_000_000)
    p = held(payload, kind="evm_tx", chain=None)
    text = describe(p, NOW, review(p, PUB))
    assert f"send 25000000000 base units of erc20:{demo.TOKEN} to {demo.COLD_EVM}" in text
    assert "chain eip155:1" in text and "max fee 0.00195 ETH" in text


def test_a_view_that_is_not_what_the_transaction_does_is_flagged() -> None:
    spend = txs.btc_spend(PUB, demo.COLD_BTC, 5_000_000)
    honest = held(spend.payload)
    other = held(txs.btc_spend(PUB, demo.SANCTIONED_BTC, 5_000_000).payload)
    # Policy (or anyone who wrote the record) shows the view of another transaction.
    lying = msgspec.structs.replace(honest, view=other.view, view_sha256=other.view_sha256)
    seen = review(lying, PUB)
    assert seen.problem and seen.view_sha256 == honest.view_sha256
    text = describe(lying, NOW, seen)
    # What is printed is this command's own decoding, with a warning.
    assert demo.COLD_BTC in text and demo.SANCTIONED_BTC not in text
    assert "WARNING" in text and "do not approve" in text
    # Lines changed but the digest kept: flagged too.
    edited = msgspec.structs.replace(honest, view=[*honest.view[:-1], "fee 0 BTC"])
    assert review(edited, PUB).problem


def test_a_record_whose_payload_hash_is_not_its_request_is_flagged() -> None:
    p = held(txs.btc_spend(PUB, demo.COLD_BTC, 1_000).payload)
    wrong = msgspec.structs.replace(p, payload_sha256=hashlib.sha256(b"x").hexdigest())
    assert "not the payload" in review(wrong, PUB).problem
    assert "key directory" in review(p, None).problem


def test_a_blind_request_says_it_is_blind_and_has_no_view_digest() -> None:
    p = held(
        b"\x01" * 32,
        kind="digest",
        chain=None,
        transfer=Transfer(asset="BTC", amount=3, destination="bc1q-x"),
    )
    seen = review(p, PUB)
    assert not seen.problem
    text = describe(p, NOW, seen)
    assert "blind: nobody can decode it" in text and "view sha256" not in text
    assert (
        "a blind request" in review(msgspec.structs.replace(p, view_sha256="ab" * 32), PUB).problem
    )
