"""Vote counting against a held request: pure, every refusal typed."""

from __future__ import annotations

import msgspec
import pytest

from proto.approvals import ApprovalVote, PendingApproval, signing_bytes
from proto.errors import ErrorCode, LantauError
from services.policy.approvals import apply, approvers, check_signature
from tests.policy.test_rules import KEYS, P

NOW = 1_000_000


def held(**kw) -> PendingApproval:
    base = dict(
        request_id="r1",
        requester="desk-a",
        key_id="desk-a-1",
        payload_sha256="ab" * 32,
        rule="outside-cold",
        group="treasury",
        quorum=2,
        eligible=["alice", "bob", "carol"],
        policy_version="t-1#x",
        created_at_ms=NOW - 1000,
        expires_at_ms=NOW + 60_000,
        request=b"",
    )
    return PendingApproval(**{**base, **kw})


def vote(approver="alice", choice="approve", vote_id=None, signer=None, **kw) -> ApprovalVote:
    v = ApprovalVote(
        vote_id=vote_id or f"v-{approver}",
        requester=kw.pop("requester", "desk-a"),
        request_id="r1",
        approver=approver,
        vote=choice,
        payload_sha256=kw.pop("payload_sha256", "ab" * 32),
        created_at_ms=NOW - 10,
        expires_at_ms=kw.pop("expires_at_ms", NOW + 60_000),
    )
    key = KEYS[signer or approver] if (signer or approver) in KEYS else KEYS["alice"]
    return msgspec.structs.replace(v, signature=key.sign(signing_bytes(v)).signature)


def test_quorum_needs_m_distinct_approvers():
    p = apply(held(), vote("alice"), NOW)
    assert p.status == "pending" and approvers(p.votes) == ["alice"]
    p = apply(p, vote("bob"), NOW)
    assert p.status == "approved" and approvers(p.votes) == ["alice", "bob"]


def test_one_rejection_rejects():
    p = apply(held(), vote("alice"), NOW)
    assert apply(p, vote("bob", "reject"), NOW).status == "rejected"


def test_the_same_vote_again_is_counted_once():
    p = apply(held(), vote("alice"), NOW)
    assert apply(p, vote("alice"), NOW) is p


REFUSALS = [
    (
        "second vote by the same approver",
        held(),
        [vote("alice")],
        vote("alice", vote_id="v2"),
        ErrorCode.DUPLICATE_APPROVAL,
    ),
    ("wrong group", held(eligible=["alice", "bob"]), [], vote("carol"), ErrorCode.WRONG_GROUP),
    ("self approval", held(requester="alice"), [], vote("alice"), ErrorCode.SELF_APPROVAL),
    ("late: window closed", held(expires_at_ms=NOW), [], vote("alice"), ErrorCode.APPROVAL_EXPIRED),
    (
        "late: vote expired",
        held(),
        [],
        vote("alice", expires_at_ms=NOW - 1),
        ErrorCode.APPROVAL_EXPIRED,
    ),
    (
        "other content",
        held(),
        [],
        vote("alice", payload_sha256="cd" * 32),
        ErrorCode.APPROVAL_MISMATCH,
    ),
    ("already decided", held(status="rejected"), [], vote("alice"), ErrorCode.NOT_PENDING),
]


@pytest.mark.parametrize(
    ("name", "pending", "before", "v", "code"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusals(name, pending, before, v, code):
    for b in before:
        pending = apply(pending, b, NOW)
    with pytest.raises(LantauError) as e:
        apply(pending, v, NOW)
    assert e.value.code == code


def test_signatures_are_checked_against_the_policy():
    check_signature(vote("bob"), P)
    with pytest.raises(LantauError) as e:
        check_signature(vote("bob", signer="alice"), P)
    assert e.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(LantauError) as e:
        check_signature(vote("mallory"), P)
    assert e.value.code == ErrorCode.UNKNOWN_APPROVER
    tampered = msgspec.structs.replace(vote("bob"), vote="reject")
    with pytest.raises(LantauError):
        check_signature(tampered, P)
