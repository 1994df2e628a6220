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
import getpass
import sys
import uuid

import msgspec
import nacl.signing
from nats.aio.client import Client

from libs import config as config_mod
from libs.approvals_view import (
    OUTCOME_WAIT_S,
    Review,
    held_requests,
    review,
    send_vote,
)
from libs.bus.permissions import OPERATOR, approver_identity
from libs.client import load_signing_key
from libs.clock import now_ms
from proto import codec
from proto.approvals import (
    ApprovalVote,
    PendingApproval,
    approvers,
    signing_bytes,
)
from proto.common import TX_KINDS
from proto.errors import LantauError
from proto.requests import SignRequest
from services.cli.identity import connect_cli
from services.cli.usage import UsageError

VOTE_TTL_MS = 300_000

__all__ = ["Review", "held_requests", "review", "send_vote"]


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
    totp_code: str = "",
) -> ApprovalVote:
    """A vote on the held request, naming its payload and view digests (and the second
    factor's TOTP code, when given), signed by ``key``."""
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
        totp_code=totp_code,
    )
    return msgspec.structs.replace(unsigned, signature=key.sign(signing_bytes(unsigned)).signature)


def _totp_code(cfg: config_mod.Config, given: str | None) -> str:
    """The second factor for a vote signed with a key file: --totp-code, else asked for
    on the terminal when the policy requires one (never echoed, never logged)."""
    if given is not None:
        code = given.strip()
    else:
        from services.policy.service import second_factor_required

        if not second_factor_required(cfg):
            return ""
        if not sys.stdin.isatty():
            raise UsageError("the policy requires a second factor: pass --totp-code CODE")
        code = getpass.getpass("TOTP code from your authenticator app: ").strip()
    if not (code.isascii() and code.isdigit() and 6 <= len(code) <= 8):
        raise UsageError("a TOTP code is 6 to 8 digits")
    return code


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
        signed = signed_vote(
            pending, args.approver, vote, key, totp_code=_totp_code(cfg, args.totp_code)
        )
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
        p.add_argument(
            "--totp-code",
            help="second factor: a code from your enrolled authenticator app (asked for when "
            "the policy requires one and this is left out)",
        )
        p.add_argument("--seed-file", help="your NATS identity seed (default: beside the config)")
        p.add_argument("--config")
        p.set_defaults(fn=fn)
