"""PinsMemo: a node's pins are rebuilt only when the policy or the credentials change."""

from __future__ import annotations

import dataclasses

from libs.config import Config, EvidenceConfig, RequesterConfig
from libs.evidence import PinsMemo, pins_from
from libs.policy_store import BUILTIN

CFG = Config(
    evidence=EvidenceConfig(policy_keys=["AB" * 32]),
    requesters=[RequesterConfig(name="desk", public_key="CD" * 32)],
)


def test_the_same_policy_and_credentials_give_the_same_pins_object() -> None:
    memo = PinsMemo(CFG)
    creds: dict = {}
    first = memo.get(BUILTIN, creds)
    assert first == pins_from(CFG, BUILTIN, creds)
    assert memo.get(BUILTIN, creds) is first
    assert memo.get(None) == pins_from(CFG, None)


def test_a_new_policy_or_new_credentials_rebuild_the_pins() -> None:
    memo = PinsMemo(CFG)
    creds: dict = {}
    first = memo.get(BUILTIN, creds)
    other_policy = dataclasses.replace(BUILTIN, version="v2")
    assert memo.get(other_policy, creds) is not first
    # An equal but new credentials mapping (the registry replaces it when it changes).
    second = memo.get(other_policy, {})
    third = memo.get(other_policy, {"alice": ()})
    assert third is not second and third.credentials == {"alice": ()}
    assert memo.get(BUILTIN, creds) == first
