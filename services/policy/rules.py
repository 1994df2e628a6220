"""The policy file and its evaluation: pure functions, no I/O.

A policy file (TOML) holds address lists, approvers (Ed25519 public keys), approver
groups and ordered rules. For a sign request the first rule whose every condition
holds decides: allow, deny, or require M approvals of a group. No rule matching is a
denial. ``docs/policy.md`` is the reference for risk officers.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from proto.common import PayloadKind, whole
from proto.requests import SignRequest
from services.policy.velocity import Window

RuleName = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Used with fullmatch and ASCII digits: `\d` took any script's digits, `$` a final newline.
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
# A [[rules]] header line, as TOML allows it to be written (spaces, quoted key, comment).
_RULES_HEADER = re.compile(r"""\s*\[\[\s*(rules|"rules"|'rules')\s*\]\]\s*(#.*)?""")


class PolicyFileError(Exception):
    """A policy file that cannot be used; the message names the line and the field."""


class Hours(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    rename={"start": "from", "end": "to"},
):
    start: str
    end: str
    tz: str
    days: list[str] = msgspec.field(default_factory=lambda: list(_DAYS))

    def contains(self, now_ms: int) -> bool:
        local = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(self.tz))
        if _DAYS[local.weekday()] not in self.days:
            return False
        t, start, end = local.time(), _clock(self.start), _clock(self.end)
        return start <= t < end if start <= end else (t >= start or t < end)


class Velocity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rolling window per key or per requester; the rule matches when this request
    would take the window past a limit."""

    per: Literal["key", "requester"]
    window_s: Annotated[int, msgspec.Meta(ge=1, le=31 * 86400)]
    max_amount: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_count: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: RuleName
    action: Literal["allow", "deny", "approve"]
    # Conditions; an absent condition holds for every request.
    keys: list[str] = []
    requesters: list[str] = []
    kinds: list[PayloadKind] = []
    has_transfer: bool | None = None
    assets: list[str] = []
    amount_above: Annotated[int, msgspec.Meta(ge=0)] | None = None
    amount_at_most: Annotated[int, msgspec.Meta(ge=0)] | None = None
    destination_in: list[str] = []
    destination_not_in: list[str] = []
    within_hours: Hours | None = None
    outside_hours: Hours | None = None
    velocity: Velocity | None = None
    # For action = "approve".
    group: str | None = None
    quorum: Annotated[int, msgspec.Meta(ge=1)] | None = None
    approval_window_s: Annotated[int, msgspec.Meta(ge=1, le=7 * 86400)] = 3600
    reason: str = ""

    @property
    def uses_transfer(self) -> bool:
        return bool(
            self.assets
            or self.amount_above is not None
            or self.amount_at_most is not None
            or self.destination_in
            or self.destination_not_in
        )


class Approver(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    public_key: Annotated[str, msgspec.Meta(pattern=whole("[0-9a-fA-F]{64}"))]


class Group(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    approvers: list[str]
    # Need-to-know for approvers: the requesters whose requests this group approves.
    approves_for: list[str]


class PolicyFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    address_lists: dict[str, list[str]] = {}
    approvers: dict[str, Approver] = {}
    groups: dict[str, Group] = {}
    rules: list[Rule] = []


@dataclass(frozen=True)
class Policy:
    file: PolicyFile
    # "<version>#<first 12 hex of the file's SHA-256>": names exactly the text in force.
    version: str
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def rules(self) -> list[Rule]:
        return self.file.rules

    def group(self, name: str) -> Group:
        return self.file.groups[name]


@dataclass(frozen=True)
class Charge:
    """One velocity window a request counts towards."""

    counter: str
    velocity: Velocity


@dataclass(frozen=True)
class Decision:
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


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def parse(text: str) -> Policy:
    """Decode and check a policy file; every error names a line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyFileError(f"not valid TOML: {e}") from None
    except (ValueError, RecursionError) as e:
        # tomllib lets these through: an integer past Python's 4300-digit limit, and
        # arrays or inline tables nested a few hundred deep.
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise PolicyFileError(f"not valid TOML: {what}") from None
    try:
        digest = hashlib.sha256(text.encode()).hexdigest()
    except UnicodeEncodeError as e:
        line = text.count("\n", 0, e.start) + 1
        raise PolicyFileError(f"line {line}: not UTF-8 text (a lone surrogate)") from None
    lines = _rule_lines(text, raw)
    try:
        policy_file = msgspec.convert(raw, PolicyFile)
    except msgspec.ValidationError as e:
        raise PolicyFileError(f"{_where(str(e), lines, raw)}: {e}") from None
    policy = Policy(
        policy_file,
        f"{policy_file.version}#{digest[:12]}",
        {r.name: lines[i] for i, r in enumerate(policy_file.rules) if i < len(lines)},
    )
    _check(policy, lines)
    return policy


def _rule_lines(text: str, raw: dict) -> list[int]:
    """The line of each rule's [[rules]] header, or [] where they cannot be told apart.

    tomllib gives no positions: rules written as an inline array, or a header-like line
    inside a multi-line string, make the headers found differ from the rules parsed.
    """
    found = [n for n, line in enumerate(text.split("\n"), 1) if _RULES_HEADER.fullmatch(line)]
    rules = raw.get("rules")
    return found if isinstance(rules, list) and len(found) == len(rules) else []


def _at(lines: list[int], i: int) -> str:
    return f"line {lines[i]}" if i < len(lines) else f"rule {i + 1}"


def _where(error: str, lines: list[int], raw: dict) -> str:
    m = re.search(r"\$\.rules\[(\d+)\]", error)
    rules = raw.get("rules")
    if m and isinstance(rules, list) and int(m.group(1)) < len(rules):
        i = int(m.group(1))
        name = rules[i].get("name", "?") if isinstance(rules[i], dict) else "?"
        if i < len(lines):
            return f"line {lines[i]} (rule {i + 1}, {name!r})"
        return f"rule {i + 1} ({name!r})"
    return "policy file"


def _check(policy: Policy, lines: list[int]) -> None:
    f = policy.file
    for name, group in f.groups.items():
        for approver in group.approvers:
            if approver not in f.approvers:
                raise PolicyFileError(f"group {name!r} names unknown approver {approver!r}")
    seen: set[str] = set()
    for i, rule in enumerate(f.rules):
        at = f"{_at(lines, i)} (rule {rule.name!r})"
        if rule.name in seen:
            raise PolicyFileError(f"{at}: a rule named {rule.name!r} already exists")
        seen.add(rule.name)
        for listed in (*rule.destination_in, *rule.destination_not_in):
            if listed not in f.address_lists:
                raise PolicyFileError(f"{at}: no address list named {listed!r}")
        for hours in (rule.within_hours, rule.outside_hours):
            if hours is None:
                continue
            for value in (hours.start, hours.end):
                if not _HHMM.fullmatch(value):
                    raise PolicyFileError(f"{at}: time {value!r} is not HH:MM")
            bad_days = [d for d in hours.days if d not in _DAYS]
            if bad_days:
                raise PolicyFileError(f"{at}: unknown days {bad_days} (use {', '.join(_DAYS)})")
            try:
                ZoneInfo(hours.tz)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                # OSError: a name too long for a path, or a directory of zones ("America").
                raise PolicyFileError(f"{at}: unknown time zone {hours.tz!r}") from None
        v = rule.velocity
        if v is not None and v.max_amount is None and v.max_count is None:
            raise PolicyFileError(f"{at}: velocity needs max_amount or max_count")
        if rule.action == "approve":
            if rule.group is None or rule.quorum is None:
                raise PolicyFileError(f"{at}: action 'approve' needs group and quorum")
            if rule.group not in f.groups:
                raise PolicyFileError(f"{at}: no approver group named {rule.group!r}")
            size = len(f.groups[rule.group].approvers)
            if rule.quorum > size:
                raise PolicyFileError(
                    f"{at}: quorum {rule.quorum} is more than group {rule.group!r} has ({size})"
                )
        elif rule.group is not None or rule.quorum is not None:
            raise PolicyFileError(f"{at}: group and quorum only apply to action 'approve'")


def counter_key(rule: Rule, request: SignRequest) -> str:
    """The KV key of the window ``rule`` keeps for this request's key or requester."""
    assert rule.velocity is not None
    scope = request.key_id if rule.velocity.per == "key" else request.requester
    safe = re.sub(r"[^A-Za-z0-9_-]", lambda m: f"={ord(m.group()):02x}", scope)
    return f"{rule.name}.{rule.velocity.per}.{safe}"


def charges_for(policy: Policy, request: SignRequest) -> tuple[Charge, ...]:
    """Every velocity window this request counts towards (if it is not denied)."""
    return tuple(
        Charge(counter_key(r, request), r.velocity)
        for r in policy.rules
        if r.velocity is not None and _static_match(policy, r, request) is None
    )


def _amount(request: SignRequest) -> int:
    return request.transfer.amount if request.transfer else 0


def _static_match(policy: Policy, rule: Rule, request: SignRequest) -> str | None:
    """None if every condition but hours and velocity holds, else the first that fails."""
    t = request.transfer
    if rule.keys and not any(fnmatch.fnmatchcase(request.key_id, p) for p in rule.keys):
        return "key"
    if rule.requesters and request.requester not in rule.requesters:
        return "requester"
    if rule.kinds and request.payload_kind not in rule.kinds:
        return "kind"
    if rule.has_transfer is not None and rule.has_transfer != (t is not None):
        return "has_transfer"
    if rule.uses_transfer and t is None:
        return "no transfer"
    if t is None:
        return None
    if rule.assets and t.asset not in rule.assets:
        return "asset"
    if rule.amount_above is not None and not t.amount > rule.amount_above:
        return "amount"
    if rule.amount_at_most is not None and not t.amount <= rule.amount_at_most:
        return "amount"
    lists = policy.file.address_lists
    if rule.destination_in and not any(t.destination in lists[n] for n in rule.destination_in):
        return "destination"
    if rule.destination_not_in and any(t.destination in lists[n] for n in rule.destination_not_in):
        return "destination"
    return None


def matches(
    policy: Policy,
    rule: Rule,
    request: SignRequest,
    now_ms: int,
    windows: Mapping[str, Window],
) -> str | None:
    """The human reason the rule matches this request, or None if it does not."""
    if _static_match(policy, rule, request) is not None:
        return None
    reasons: list[str] = []
    t = request.transfer
    if t is not None and rule.uses_transfer:
        reasons.append(f"{t.amount} {t.asset} to {t.destination}")
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
        amount = _amount(request)
        over = []
        if v.max_count is not None and count + 1 > v.max_count:
            over.append(f"{count + 1} requests > {v.max_count}")
        if v.max_amount is not None and total + amount > v.max_amount:
            over.append(f"{total + amount} > {v.max_amount}")
        if not over:
            return None
        reasons.append(f"{v.window_s} s window per {v.per} would reach " + " and ".join(over))
    return "; ".join(reasons) or "matches"


def evaluate(
    policy: Policy, request: SignRequest, now_ms: int, windows: Mapping[str, Window]
) -> Decision:
    """First matching rule wins; none matching denies."""
    for rule in policy.rules:
        why = matches(policy, rule, request, now_ms, windows)
        if why is None:
            continue
        text = f"rule {rule.name!r} ({why})" + (f": {rule.reason}" if rule.reason else "")
        if rule.action == "deny":
            return Decision("deny", rule.name, text, policy.version)
        charges = charges_for(policy, request)
        if rule.action == "allow":
            return Decision("allow", rule.name, text, policy.version, charges=charges)
        assert rule.group is not None and rule.quorum is not None
        group = policy.group(rule.group)
        if request.requester not in group.approves_for:
            return Decision(
                "deny",
                rule.name,
                f"{text}: group {rule.group!r} does not approve for {request.requester}",
                policy.version,
            )
        return Decision(
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
    return Decision(
        "deny", DEFAULT_DENY, "no rule allows this request (deny by default)", policy.version
    )
