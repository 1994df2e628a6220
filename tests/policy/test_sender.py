"""Policy refuses a request or vote whose subject names another sender than its body."""

from __future__ import annotations

import pytest

from proto.approvals import ApprovalVote
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest
from proto.subjects import approval_vote_subject, sign_request_subject
from services.policy.service import check_sender

REQUEST = SignRequest(
    request_id="r1",
    requester="desk-a",
    key_id="desk-a-k",
    payload=b"x" * 32,
    payload_kind="digest",
    created_at_ms=1,
    expires_at_ms=2,
)
VOTE = ApprovalVote(
    vote_id="v1",
    requester="desk-a",
    request_id="r1",
    approver="alice",
    vote="approve",
    payload_sha256="00" * 32,
    created_at_ms=1,
    expires_at_ms=2,
)


def test_the_subject_of_the_sender_itself_passes():
    check_sender(REQUEST, sign_request_subject("desk-a"))
    check_sender(VOTE, approval_vote_subject("alice"))


@pytest.mark.parametrize(
    ("message", "subject"),
    [
        (REQUEST, sign_request_subject("desk-b")),
        (REQUEST, "lantau.request.sign"),  # the old, senderless subject
        (VOTE, approval_vote_subject("bob")),
        (VOTE, approval_vote_subject("desk-a")),  # a requester's name is no approver's
    ],
)
def test_a_subject_naming_someone_else_is_refused(message, subject):
    with pytest.raises(LantauError) as refused:
        check_sender(message, subject)
    assert refused.value.code == ErrorCode.SUBJECT_MISMATCH
