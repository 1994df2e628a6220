"""Rules on how a key is kept (protection) and on HD derivation paths, and a requester's
own path restriction: pure calls, as the policy service makes them."""

from __future__ import annotations

import pytest

from libs.config import RequesterConfig
from libs.policy_file import PolicyFileError, parse
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest, Transfer
from services.policy import auth
from services.policy.facts import facts_of
from services.policy.rules import evaluate

POLICY = parse(
    """
version = "kt-1"

[[rules]]
name = "wrapped-small-only"
protection = ["hsm-wrapped"]
amount_above = 5000
action = "deny"

[[rules]]
name = "closed-account"
paths = ["m/44'/60'/9'/*"]
action = "deny"

[[rules]]
name = "hd-account-0"
paths = ["m/44'/60'/0'/*"]
protection = ["hsm-wrapped"]
action = "allow"

[[rules]]
name = "native-keys"
protection = ["hsm"]
action = "allow"
"""
)


def req(amount: int | None = None, path: str | None = None) -> SignRequest:
    return SignRequest(
        request_id="r1",
        requester="desk-a",
        key_id="desk-a-k",
        payload=b"x" * 32,
        transfer=Transfer(asset="ETH", amount=amount, destination="0xfeed")
        if amount is not None
        else None,
        created_at_ms=1,
        expires_at_ms=2,
        path=path,
    )


def verdict(request: SignRequest, protection: str) -> tuple[str, str]:
    v = evaluate(POLICY, request, 1, {}, facts_of(request, None, protection=protection))
    return v.action, v.rule


@pytest.mark.parametrize(
    ("request_", "protection", "expected"),
    [
        (req(6000), "hsm", ("allow", "native-keys")),  # large, but the HSM holds it natively
        (req(6000, "m/44'/60'/0'/0/1"), "hsm-wrapped", ("deny", "wrapped-small-only")),
        (req(5000, "m/44'/60'/0'/0/1"), "hsm-wrapped", ("allow", "hd-account-0")),
        (req(1, "m/44'/60'/9'/0/1"), "hsm-wrapped", ("deny", "closed-account")),
        (req(1, "m/44'/60'/1'/0/1"), "hsm-wrapped", ("deny", "default-deny")),
        (req(1), "hsm-wrapped", ("deny", "default-deny")),  # no path: paths rules skip it
    ],
)
def test_protection_and_path_conditions(request_, protection, expected) -> None:
    assert verdict(request_, protection) == expected


def test_the_explanation_names_what_matched() -> None:
    request = req(6000, "m/44'/60'/0'/0/1")
    v = evaluate(POLICY, request, 1, {}, facts_of(request, None, protection="hsm-wrapped"))
    assert "key kept hsm-wrapped" in v.explanation


def test_an_unknown_protection_is_a_policy_file_error() -> None:
    with pytest.raises(PolicyFileError):
        parse('version = "x"\n[[rules]]\nname = "r"\nprotection = ["soft"]\naction = "allow"\n')


def test_a_requester_restricted_to_paths_signs_only_there() -> None:
    desk = RequesterConfig(name="desk-a", public_key="00" * 32, paths=["m/44'/60'/7'/*"])
    auth.check_path(req(1, "m/44'/60'/7'/0/2"), desk)
    auth.check_path(req(1), desk)  # not an HD request: nothing to restrict
    with pytest.raises(LantauError) as e:
        auth.check_path(req(1, "m/44'/60'/0'/0/2"), desk)
    assert e.value.code == ErrorCode.ACCESS_DENIED
    unrestricted = RequesterConfig(name="desk-a", public_key="00" * 32)
    auth.check_path(req(1, "m/44'/60'/0'/0/2"), unrestricted)
