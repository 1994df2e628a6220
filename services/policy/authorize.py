"""Policy's signed word: the authorization that travels with every order.

The hsm-node pins policy's authority key and signs nothing without this statement
over exactly the request, key and bytes it is asked to sign (libs/evidence.py).
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from libs.hsm.authority import AuthorityKey
from libs.keytypes import kinds
from proto import codec
from proto.approvals import ApprovalVote
from proto.approvals import signing_bytes as vote_bytes
from proto.authorization import (
    CreateKeyAuthorization,
    SignAuthorization,
    digest_of,
    signing_bytes,
)
from proto.orders import CreateKeyOrder, Decision, SignOrder
from proto.requests import CreateKeyRequest, SignRequest, request_hash

S = TypeVar("S", SignAuthorization, CreateKeyAuthorization)


class Authorizer:
    def __init__(self, key: AuthorityKey) -> None:
        self.key = key

    async def _sign(self, statement: S) -> S:
        signature = await self.key.sign(signing_bytes(statement))
        return msgspec.structs.replace(statement, signature=signature)

    async def sign_order(
        self,
        request: SignRequest,
        *,
        curve: str,
        digests: list[str],
        blind: bool,
        view_sha256: str,
        decision: Decision,
        issued_at_ms: int,
        deadline_ms: int,
        group: str = "",
        quorum: int = 0,
        votes: list[ApprovalVote] | None = None,
    ) -> SignOrder:
        votes = votes or []
        authorization = await self._sign(
            SignAuthorization(
                requester=request.requester,
                request_id=request.request_id,
                request_hash=request_hash(request),
                key_id=request.key_id,
                curve=curve,  # type: ignore[arg-type]
                payload_kind=request.payload_kind,
                blind=blind,
                digests=digests,
                view_sha256=view_sha256,
                rule=decision.rule,
                policy_version=decision.policy_version,
                group=group,
                quorum=quorum,
                approvals=[digest_of(vote_bytes(v)) for v in votes],
                issued_at_ms=issued_at_ms,
                not_after_ms=deadline_ms,
                signed_by=self.key.public_hex,
                path=request.path,
            )
        )
        return SignOrder(
            request_id=request.request_id,
            request_hash=authorization.request_hash,
            requester=request.requester,
            key_id=request.key_id,
            decision=decision,
            requested_at_ms=request.created_at_ms,
            deadline_ms=deadline_ms,
            request=codec.encode(request),
            authorization=authorization,
            approvals=votes,
        )

    async def create_order(
        self, request: CreateKeyRequest, *, decision: Decision, issued_at_ms: int, deadline_ms: int
    ) -> CreateKeyOrder:
        """The order to create a key: policy's word on its id, type, region and (HSS)
        shape, the default shape filled in, so the node makes exactly what was decided."""
        authorization = await self._sign(
            CreateKeyAuthorization(
                requester=request.requester,
                request_id=request.request_id,
                request_hash=request_hash(request),
                key_id=request.key_id,
                curve=request.curve,
                region=request.region,
                rule=decision.rule,
                policy_version=decision.policy_version,
                issued_at_ms=issued_at_ms,
                not_after_ms=deadline_ms,
                signed_by=self.key.public_hex,
                hss=kinds.effective_hss(request.curve, request.hss),
            )
        )
        return CreateKeyOrder(
            request_id=request.request_id,
            request_hash=authorization.request_hash,
            requester=request.requester,
            key_id=request.key_id,
            curve=request.curve,
            region=request.region,
            decision=decision,
            requested_at_ms=request.created_at_ms,
            deadline_ms=deadline_ms,
            request=codec.encode(request),
            authorization=authorization,
        )
