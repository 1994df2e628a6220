"""Evaluating the policy file's rules: pure functions, no I/O.

For a sign request the first rule whose every condition holds decides: allow, deny, or
require M approvals of a group; no rule matching is a denial. Conditions judge the
request's facts (services/policy/facts.py): parsed from a transaction, declared only
for a blind payload.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from libs.chains import Movement
from libs.policy_file import Policy, Rule, Velocity, among
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest
from services.policy.facts import Facts, facts_of
from services.policy.velocity import Window


@dataclass(frozen=True)
class Charge:
    """One velocity window a request counts towards, and by how much."""

    counter: str
    velocity: Velocity
    amount: int = 0


@dataclass(frozen=True)
class Verdict:
    action: Literal["allow", "deny", "approve"]
    rule: str
    explanation: str
    policy_version: str
    group: str | None = None
    quorum: int = 0
    approval_window_s: int = 0
    eligible: tuple[str, ...] = ()
    charges: tuple[Charge, ...] = ()


DEFAULT_DENY = "default-deny"


def check_facts(policy: Policy, facts: Facts) -> None:
    """Refuse movements of an unknown asset or beyond what the asset can hold, before
    any rule or window sees them."""
    for m in facts.movements:
        asset = policy.asset(m.asset)
        if asset is None:
            raise LantauError(
                ErrorCode.UNKNOWN_ASSET, f"asset {m.asset} is not known to the policy"
            )
        if m.amount > asset.limit():
            raise LantauError(
                ErrorCode.AMOUNT_OUT_OF_RANGE,
                f"a movement of {m.amount} minor units of {m.asset} is more than the asset "
                "can hold",
            )


def counter_key(rule: Rule, request: SignRequest) -> str:
    """The KV key of the window ``rule`` keeps for this request's key or requester."""
    assert rule.velocity is not None
    scope = request.key_id if rule.velocity.per == "key" else request.requester
    safe = re.sub(r"[^A-Za-z0-9_-]", lambda m: f"={ord(m.group()):02x}", scope)
    return f"{rule.name}.{rule.velocity.per}.{safe}"


def charges_for(policy: Policy, request: SignRequest, facts: Facts) -> tuple[Charge, ...]:
    """Every velocity window this request counts towards (if it is not denied), and
    the amount it counts for in each."""
    return tuple(
        Charge(counter_key(r, request), r.velocity, facts.total(r.assets))
        for r in policy.rules
        if r.velocity is not None
        and _static_match(policy, r, request, facts, counting=True) is None
    )


def _movement_fits(policy: Policy, rule: Rule, m: Movement) -> bool:
    if rule.assets and not among(m.asset, rule.assets):
        return False
    if rule.destination_in and not policy.listed(m.destination, rule.destination_in):
        return False
    return not (rule.destination_not_in and policy.listed(m.destination, rule.destination_not_in))


def _static_match(
    policy: Policy, rule: Rule, request: SignRequest, facts: Facts, *, counting: bool = False
) -> str | None:
    """None if every condition but hours and velocity holds, else the first that fails.
    ``counting``: for charging windows, where an undecoded transaction that some rule let
    through counts like any other."""
    if rule.keys and not any(fnmatch.fnmatchcase(request.key_id, p) for p in rule.keys):
        return "key"
    if rule.requesters and request.requester not in rule.requesters:
        return "requester"
    if rule.kinds and request.payload_kind not in rule.kinds:
        return "kind"
    if rule.blind is not None and rule.blind != facts.blind:
        return "blind"
    if rule.protection and facts.protection not in rule.protection:
        return "protection"
    if rule.paths and (
        request.path is None or not any(fnmatch.fnmatchcase(request.path, p) for p in rule.paths)
    ):
        return "path"
    if rule.unknown is not None and rule.unknown != facts.unknown:
        return "unknown"
    # What nobody decoded is denied by default: only a deny rule may match it without
    # saying unknown = true (an approve rule would put an unreadable call before people).
    if rule.unknown is None and facts.unknown and rule.action != "deny" and not counting:
        return "unknown transaction"
    moves = facts.movements
    if rule.has_transfer is not None and rule.has_transfer != bool(moves):
        return "has_transfer"
    if rule.uses_transfer and not moves:
        return "no transfer"
    if rule.chains and facts.chain not in rule.chains:
        return "chain"
    quantifier = any if rule.restrictive else all
    if (rule.assets or rule.destination_in or rule.destination_not_in) and not quantifier(
        _movement_fits(policy, rule, m) for m in moves
    ):
        return "movements"
    total = facts.total(rule.assets)
    if rule.amount_above is not None and not total > int(rule.amount_above):
        return "amount"
    if rule.amount_at_most is not None and not total <= int(rule.amount_at_most):
        return "amount"
    contracts = facts.contracts
    if rule.contracts_in and not quantifier(policy.listed(c, rule.contracts_in) for c in contracts):
        return "contracts"
    if rule.contracts_not_in and not quantifier(
        not policy.listed(c, rule.contracts_not_in) for c in contracts
    ):
        return "contracts"
    if rule.fee_above is not None and not (facts.fee or 0) > int(rule.fee_above):
        return "fee"
    return None


def _moved(facts: Facts) -> str:
    shown = [f"{m.amount} minor units of {m.asset} to {m.destination}" for m in facts.movements[:3]]
    more = len(facts.movements) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def matches(
    policy: Policy,
    rule: Rule,
    request: SignRequest,
    now_ms: int,
    windows: Mapping[str, Window],
    facts: Facts | None = None,
) -> str | None:
    """The human reason the rule matches this request, or None if it does not."""
    facts = facts or facts_of(request, None)
    if _static_match(policy, rule, request, facts) is not None:
        return None
    reasons: list[str] = []
    if facts.movements and rule.uses_transfer:
        reasons.append(_moved(facts))
    if facts.unknown and rule.unknown:
        reasons.append("the transaction has parts nobody decoded: " + ", ".join(facts.calls))
    if rule.protection:
        reasons.append(f"key kept {facts.protection}")
    if rule.paths:
        reasons.append(f"path {request.path}")
    if rule.fee_above is not None:
        reasons.append(f"fee {facts.fee} > {rule.fee_above}")
    if rule.within_hours is not None:
        if not rule.within_hours.contains(now_ms):
            return None
        h = rule.within_hours
        reasons.append(f"within {h.start}-{h.end} {h.tz}")
    if rule.outside_hours is not None:
        if rule.outside_hours.contains(now_ms):
            return None
        h = rule.outside_hours
        reasons.append(f"outside {h.start}-{h.end} {h.tz}")
    if rule.velocity is not None:
        v = rule.velocity
        window = windows.get(counter_key(rule, request), Window())
        count, total = window.totals(now_ms, v.window_s)
        amount = facts.total(rule.assets)
        over = []
        if v.max_count is not None and count + 1 > v.max_count:
            over.append(f"{count + 1} requests > {v.max_count}")
        if v.max_amount is not None and total + amount > int(v.max_amount):
            over.append(f"{total + amount} > {v.max_amount}")
        if not over:
            return None
        reasons.append(f"{v.window_s} s window per {v.per} would reach " + " and ".join(over))
    return "; ".join(reasons) or "matches"


def evaluate(
    policy: Policy,
    request: SignRequest,
    now_ms: int,
    windows: Mapping[str, Window],
    facts: Facts | None = None,
) -> Verdict:
    """First matching rule wins; none matching denies. ``facts``: what the request does
    (parsed for a transaction; by default the declaration of a blind request)."""
    facts = facts or facts_of(request, None)
    for rule in policy.rules:
        why = matches(policy, rule, request, now_ms, windows, facts)
        if why is None:
            continue
        text = f"rule {rule.name!r} ({why})" + (f": {rule.reason}" if rule.reason else "")
        if rule.action == "deny":
            return Verdict("deny", rule.name, text, policy.version)
        charges = charges_for(policy, request, facts)
        if rule.action == "allow":
            return Verdict("allow", rule.name, text, policy.version, charges=charges)
        assert rule.group is not None and rule.quorum is not None
        group = policy.group(rule.group)
        if request.requester not in group.approves_for:
            return Verdict(
                "deny",
                rule.name,
                f"{text}: group {rule.group!r} does not approve for {request.requester}",
                policy.version,
            )
        return Verdict(
            "approve",
            rule.name,
            f"{text}: needs {rule.quorum} of {len(group.approvers)} approvers of {rule.group!r}",
            policy.version,
            group=rule.group,
            quorum=rule.quorum,
            approval_window_s=rule.approval_window_s,
            eligible=tuple(group.approvers),
            charges=charges,
        )
    return Verdict(
        "deny", DEFAULT_DENY, "no rule allows this request (deny by default)", policy.version
    )
