"""``lantau approvals list``, ``lantau approve ID``, ``lantau reject ID``: the approver's side.

A vote is signed with the approver's Ed25519 key file (``lantau keygen``) over the
request id, the hash of what will be signed, the vote and an expiry; it travels on
the requests stream like any request, and policy answers with an ApprovalOutcome.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs import config as config_mod
from libs.bus import kv
from libs.bus.permissions import OPERATOR, approver_identity
from libs.bus.publish import publish
from libs.bus.violations import subscribe_checked
from libs.client import load_signing_key
from libs.clock import now_ms
from proto import codec
from proto.approvals import (
    ApprovalOutcome,
    ApprovalVote,
    PendingApproval,
    approvers,
    signing_bytes,
)
from proto.errors import LantauError
from proto.requests import SignRequest
from proto.subjects import APPROVALS_BUCKET, approval_event_subject, approval_vote_subject
from services.cli.identity import connect_cli
from services.cli.usage import UsageError

VOTE_TTL_MS = 300_000

OUTCOME_WAIT_S = 15.0


async def _held(nc: Client, scope: list[str] | None) -> list[PendingApproval]:
    """Held requests: all of them (operator), or those of the requesters in ``scope``
    (an approver may read no others)."""
    bucket = await nc.jetstream().key_value(APPROVALS_BUCKET)
    found = []
    for under in [None] if scope is None else scope:
        found += await kv.values(bucket, under)
    held = [codec.PENDING_APPROVAL.decode(value) for _, value, _ in found]
    return sorted(held, key=lambda p: p.created_at_ms)


def _scope(cfg: config_mod.Config, approver: str | None) -> list[str] | None:
    """The requesters ``approver``'s groups approve for (policy file), None for all."""
    if approver is None:
        return None
    # Imported here: the policy service is heavy and only approvers' commands need it.
    from services.policy.service import approver_scopes

    return approver_scopes(cfg).get(approver, [])


async def _connect(
    cfg: config_mod.Config, args: argparse.Namespace, approver: str | None
) -> Client:
    identity = approver_identity(approver) if approver else OPERATOR
    return await connect_cli(
        cfg, identity, seed_file=args.seed_file, config_path=args.config, name="lantau-approvals"
    )


def find(held: list[PendingApproval], wanted: str) -> PendingApproval | None:
    """The held request named ``REQUESTER/ID``, or by its id alone when that is unique."""
    if "/" in wanted:
        requester, request_id = wanted.split("/", 1)
        found = [p for p in held if (p.requester, p.request_id) == (requester, request_id)]
    else:
        found = [p for p in held if p.request_id == wanted]
    if len(found) > 1:
        raise UsageError(f"{wanted} names several held requests: use REQUESTER/ID")
    return found[0] if found else None


def describe(p: PendingApproval, now_ms: int) -> str:
    request = codec.REQUEST.decode(p.request)
    what = ""
    if isinstance(request, SignRequest) and request.transfer:
        t = request.transfer
        what = f"  transfer {t.amount} {t.asset} to {t.destination}\n"
    yes = approvers(p.votes)
    left = max(0, (p.expires_at_ms - now_ms) // 1000)
    state = f"{p.status}, {left} s left" if p.status == "pending" else p.status
    return (
        f"{p.requester}/{p.request_id}  [{state}]\n"
        f"  requester {p.requester}, key {p.key_id}, rule {p.rule!r} (policy {p.policy_version})\n"
        f"{what}"
        f"  payload sha256 {p.payload_sha256}\n"
        f"  needs {p.quorum} of group {p.group!r} {p.eligible}; approved by {yes or 'nobody'}"
    )


async def _list(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    nc = await _connect(cfg, args, args.approver)
    try:
        scope = _scope(cfg, args.approver)
        held = [p for p in await _held(nc, scope) if args.all or p.status == "pending"]
    finally:
        await nc.close()
    if not held:
        print("no requests waiting for approval")
        return 0
    now = now_ms()
    for p in held:
        print(describe(p, now))
    return 0


async def _vote(args: argparse.Namespace, vote: str) -> int:
    cfg = config_mod.load_for_cli(args.config)
    key = load_signing_key(args.key_file)
    nc = await _connect(cfg, args, args.approver)
    try:
        pending = find(await _held(nc, _scope(cfg, args.approver)), args.request_id)
        if pending is None:
            print(f"lantau: no request {args.request_id} is waiting for approval", file=sys.stderr)
            return 1
        if args.payload_sha256 and args.payload_sha256 != pending.payload_sha256:
            print(
                "lantau: the held request signs different content than you reviewed "
                f"(held: {pending.payload_sha256})",
                file=sys.stderr,
            )
            return 1
        now = now_ms()
        unsigned = ApprovalVote(
            vote_id=uuid.uuid4().hex,
            requester=pending.requester,
            request_id=pending.request_id,
            approver=args.approver,
            vote=vote,  # type: ignore[arg-type]
            payload_sha256=pending.payload_sha256,
            created_at_ms=now,
            expires_at_ms=now + VOTE_TTL_MS,
        )
        signed = msgspec.structs.replace(
            unsigned, signature=key.sign(signing_bytes(unsigned)).signature
        )
        outcome: asyncio.Future[ApprovalOutcome] = asyncio.get_running_loop().create_future()

        async def on_outcome(msg: Msg) -> None:
            try:
                event = codec.EVENT.decode(msg.data)
            except LantauError:
                return
            if (
                isinstance(event, ApprovalOutcome)
                and event.vote_id == signed.vote_id
                and not outcome.done()
            ):
                outcome.set_result(event)

        subject = approval_event_subject(pending.requester, pending.request_id)
        sub = await subscribe_checked(nc, subject, cb=on_outcome)
        await publish(
            nc.jetstream(),
            approval_vote_subject(args.approver),
            signed,
            msg_id=f"vote:{signed.vote_id}",
        )
        try:
            result = await asyncio.wait_for(outcome, timeout=OUTCOME_WAIT_S)
        except TimeoutError:
            print(
                f"lantau: vote {signed.vote_id} sent, but policy did not answer within "
                f"{OUTCOME_WAIT_S:.0f} s; `lantau approvals list --all` shows its state",
                file=sys.stderr,
            )
            return 1
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    if not result.accepted:
        print(f"lantau: vote refused: {result.code}: {result.message}", file=sys.stderr)
        return 1
    print(f"{args.request_id}: {result.message} [{result.status}]")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    return asyncio.run(_list(args))


def cmd_approve(args: argparse.Namespace) -> int:
    return asyncio.run(_vote(args, "approve"))


def cmd_reject(args: argparse.Namespace) -> int:
    return asyncio.run(_vote(args, "reject"))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    approvals = sub.add_parser("approvals", help="requests held for human approval")
    actions = approvals.add_subparsers(dest="approvals", required=True)
    p = actions.add_parser("list", help="requests waiting for approvers")
    p.add_argument("--all", action="store_true", help="also decided requests")
    p.add_argument("--approver", help="as this approver: only what its groups approve")
    p.add_argument("--seed-file", help="NATS identity seed (default: beside the config)")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_list)
    for name, fn, text in (
        ("approve", cmd_approve, "approve a held request"),
        ("reject", cmd_reject, "reject a held request (one rejection rejects it)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("request_id")
        p.add_argument("--approver", required=True, help="your approver name in the policy")
        p.add_argument("--key-file", required=True, help="your Ed25519 key (lantau keygen)")
        p.add_argument("--payload-sha256", help="refuse unless the held request signs exactly this")
        p.add_argument("--seed-file", help="your NATS identity seed (default: beside the config)")
        p.add_argument("--config")
        p.set_defaults(fn=fn)
