"""``lantau approvals list``, ``lantau approve ID``, ``lantau reject ID``: the approver's side.

A vote is signed with the approver's Ed25519 key file (``lantau keygen``) over the
request id, the hash of what will be signed, the digest of the decoded view the
approver was shown, the vote and an expiry; it travels on the requests stream like any
request, and policy answers with an ApprovalOutcome. The command decodes the held
transaction again itself (libs/chains) and refuses to approve when what policy shows
is not what the transaction does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass

import msgspec
import nacl.signing
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
    payload_sha256,
    signing_bytes,
)
from proto.common import TX_KINDS
from proto.errors import LantauError
from proto.requests import SignRequest
from proto.subjects import APPROVALS_BUCKET, approval_event_subject, approval_vote_subject
from services.cli.identity import connect_cli
from services.cli.usage import UsageError

VOTE_TTL_MS = 300_000

OUTCOME_WAIT_S = 15.0


async def held_requests(nc: Client, scope: list[str] | None = None) -> list[PendingApproval]:
    """Held requests, oldest first: all of them (operator), or those of the requesters in
    ``scope`` (an approver may read no others)."""
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


@dataclass(frozen=True)
class Review:
    """The held request as this command decodes it itself, and what disagrees with the
    record policy keeps ("" when nothing does)."""

    view: list[str]
    view_sha256: str
    problem: str = ""


def review(p: PendingApproval, public_key: bytes | None) -> Review:
    """Decode the held request again from its own bytes: the view an approver reads is
    then this command's, not only policy's word."""
    try:
        request = codec.REQUEST.decode(p.request)
    except LantauError as e:
        return Review(p.view, p.view_sha256, f"the held request does not decode ({e.code})")
    if not isinstance(request, SignRequest) or payload_sha256(request.payload) != p.payload_sha256:
        return Review(p.view, p.view_sha256, "the held request is not the payload it names")
    if request.payload_kind not in TX_KINDS:
        problem = "a blind request with a decoded view" if p.view_sha256 else ""
        return Review(p.view, p.view_sha256, problem)
    if public_key is None:
        return Review(p.view, p.view_sha256, f"key {p.key_id} is not in the key directory")
    # Imported here: the chains' libraries take most of a second to load, which every
    # other `lantau` command (and a vote on a blind request) would pay for nothing.
    from libs import chains

    try:
        parsed = chains.parse(
            request.payload_kind, request.payload, public_key, chain_hint=request.chain
        )
    except LantauError as e:
        return Review(p.view, p.view_sha256, f"the held transaction does not decode ({e.code})")
    mine = Review(parsed.summary, chains.view_digest(parsed))
    if (mine.view, mine.view_sha256) != (p.view, p.view_sha256):
        return Review(
            mine.view,
            mine.view_sha256,
            f"policy shows view {p.view_sha256[:16] or 'none'}..., the transaction decodes to "
            f"{mine.view_sha256[:16]}...",
        )
    return mine


def describe(p: PendingApproval, now_ms: int, seen: Review | None = None) -> str:
    """One held request as an approver reads it: who asks, what will be signed (decoded),
    the digests a vote names, and the quorum."""
    try:
        request: object = codec.REQUEST.decode(p.request)
    except LantauError:
        request = None  # review() says so
    kind = request.payload_kind if isinstance(request, SignRequest) else "?"
    seen = seen or Review(p.view, p.view_sha256)
    blind = kind not in TX_KINDS
    lines = [
        f"{p.requester}/{p.request_id}  [{_state(p, now_ms)}]",
        f"  requester {p.requester}, key {p.key_id}, rule {p.rule!r} (policy {p.policy_version})",
        f"  what will be signed ({kind}, "
        + ("blind: nobody can decode it" if blind else "decoded")
        + "):",
        *(f"    | {line}" for line in seen.view),
    ]
    if not blind:
        if isinstance(request, SignRequest) and request.transfer:
            t = request.transfer
            lines.append(f"  declared transfer {t.amount} {t.asset} to {t.destination} (matches)")
        checked = "decoded again here: the same" if not seen.problem else "NOT CHECKED"
        lines.append(f"  view sha256 {seen.view_sha256} ({checked})")
    if seen.problem:
        lines.append(f"  WARNING: {seen.problem}: do not approve")
    yes = approvers(p.votes)
    lines += [
        f"  payload sha256 {p.payload_sha256}",
        f"  needs {p.quorum} of group {p.group!r} {p.eligible}; approved by {yes or 'nobody'}",
    ]
    return "\n".join(lines)


def _state(p: PendingApproval, now_ms: int) -> str:
    left = max(0, (p.expires_at_ms - now_ms) // 1000)
    return f"{p.status}, {left} s left" if p.status == "pending" else p.status


def _reviewed(held: list[PendingApproval]) -> list[Review]:
    """Each held request decoded here again, with the key policy held it for (an approver
    reads nothing of the key directory: the held request names its public key)."""
    return [review(p, p.public_key or None) for p in held]


async def _list(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    nc = await _connect(cfg, args, args.approver)
    try:
        scope = _scope(cfg, args.approver)
        held = [p for p in await held_requests(nc, scope) if args.all or p.status == "pending"]
        seen = _reviewed(held)
    finally:
        await nc.close()
    if not held:
        print("no requests waiting for approval")
        return 0
    now = now_ms()
    for p, r in zip(held, seen, strict=True):
        print(describe(p, now, r))
    return 0


def signed_vote(
    pending: PendingApproval,
    approver: str,
    vote: str,
    key: nacl.signing.SigningKey,
    *,
    view_sha256: str | None = None,
) -> ApprovalVote:
    """A vote on the held request, naming its payload and view digests, signed by ``key``."""
    now = now_ms()
    unsigned = ApprovalVote(
        vote_id=uuid.uuid4().hex,
        requester=pending.requester,
        request_id=pending.request_id,
        approver=approver,
        vote=vote,  # type: ignore[arg-type]
        payload_sha256=pending.payload_sha256,
        view_sha256=pending.view_sha256 if view_sha256 is None else view_sha256,
        created_at_ms=now,
        expires_at_ms=now + VOTE_TTL_MS,
    )
    return msgspec.structs.replace(unsigned, signature=key.sign(signing_bytes(unsigned)).signature)


async def send_vote(nc: Client, signed: ApprovalVote) -> ApprovalOutcome | None:
    """Publish a vote and wait for policy's word on it (None if none came in time)."""
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

    subject = approval_event_subject(signed.requester, signed.request_id)
    sub = await subscribe_checked(nc, subject, cb=on_outcome)
    await publish(
        nc.jetstream(),
        approval_vote_subject(signed.approver),
        signed,
        msg_id=f"vote:{signed.vote_id}",
    )
    try:
        return await asyncio.wait_for(outcome, timeout=OUTCOME_WAIT_S)
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()


def _refuse(text: str) -> int:
    print(f"lantau: {text}", file=sys.stderr)
    return 1


async def _vote(args: argparse.Namespace, vote: str) -> int:
    cfg = config_mod.load_for_cli(args.config)
    key = load_signing_key(args.key_file)
    nc = await _connect(cfg, args, args.approver)
    try:
        pending = find(await held_requests(nc, _scope(cfg, args.approver)), args.request_id)
        if pending is None:
            return _refuse(f"no request {args.request_id} is waiting for approval")
        if args.payload_sha256 and args.payload_sha256 != pending.payload_sha256:
            return _refuse(
                "the held request signs different content than you reviewed "
                f"(held: {pending.payload_sha256})"
            )
        if args.view_sha256 and args.view_sha256 != pending.view_sha256:
            return _refuse(
                "the held request's decoded view is not the one you reviewed "
                f"(held: {pending.view_sha256 or 'none, a blind request'})"
            )
        [seen] = _reviewed([pending])
        if seen.problem and vote == "approve":
            return _refuse(f"not approving: {seen.problem}")
        signed = signed_vote(pending, args.approver, vote, key)
        result = await send_vote(nc, signed)
    finally:
        await nc.close()
    if result is None:
        return _refuse(
            f"vote {signed.vote_id} sent, but policy did not answer within "
            f"{OUTCOME_WAIT_S:.0f} s; `lantau approvals list --all` shows its state"
        )
    if not result.accepted:
        return _refuse(f"vote refused: {result.code}: {result.message}")
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
        p.add_argument(
            "--view-sha256", help="refuse unless the held request's decoded view is exactly this"
        )
        p.add_argument("--seed-file", help="your NATS identity seed (default: beside the config)")
        p.add_argument("--config")
        p.set_defaults(fn=fn)
