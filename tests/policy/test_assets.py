"""Declared amounts are bounded by what their asset can hold, before any rule sees them."""

from __future__ import annotations

import pytest

from libs.policy_file import parse
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest, Transfer
from services.policy.facts import facts_of
from services.policy.rules import check_facts

POLICY = parse(
    """
version = "assets-1"
[assets.USDC]
decimals = 6
max_amount = "100000000000000000"
[assets.BTC]
decimals = 8
max_amount = 100
"""
)


def req(asset: str, amount: int) -> SignRequest:
    return SignRequest(
        request_id="r",
        requester="desk",
        key_id="k",
        payload=b"\x00" * 32,
        transfer=Transfer(asset=asset, amount=amount, destination="d"),
        created_at_ms=1,
        expires_at_ms=2,
    )


@pytest.mark.parametrize(
    ("asset", "amount", "code"),
    [
        ("BTC", 101, ErrorCode.AMOUNT_OUT_OF_RANGE),  # the file tightens the builtin
        ("SOL", 10**18 + 1, ErrorCode.AMOUNT_OUT_OF_RANGE),  # builtin
        ("USDC", 10**17 + 1, ErrorCode.AMOUNT_OUT_OF_RANGE),  # beyond int64 in TOML: string
        ("DOGE", 1, ErrorCode.UNKNOWN_ASSET),
    ],
)
def test_refused(asset, amount, code):
    with pytest.raises(LantauError) as e:
        check_facts(POLICY, facts_of(req(asset, amount), None))
    assert e.value.code == code and asset in e.value.message


@pytest.mark.parametrize(("asset", "amount"), [("BTC", 100), ("USDC", 10**17), ("ETH", 2**63)])
def test_within_bounds(asset, amount):
    check_facts(POLICY, facts_of(req(asset, amount), None))
