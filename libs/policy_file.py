"""The policy file: its format and its parser, shared by policy (which evaluates its
rules) and the hsm-nodes (which pin its approvers and groups). Pure, no I/O.

A policy file (TOML) holds assets, address lists, approvers (Ed25519 public keys),
approver groups and ordered rules. ``docs/policy.md`` is the reference for risk
officers; evaluation lives in services/policy/rules.py.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, time
from functools import cached_property
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from proto.common import PayloadKind, Protection, whole
from proto.errors import ErrorCode, LantauError

RuleName = Annotated[str, msgspec.Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"))]
# Minor units: an integer, or a string of digits beyond TOML's 64-bit integers (wei).
Amount = (
    Annotated[int, msgspec.Meta(ge=0)] | Annotated[str, msgspec.Meta(pattern=whole("[0-9]{1,78}"))]
)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Used with fullmatch and ASCII digits: `\d` took any script's digits, `$` a final newline.
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
# A [[rules]] header line, as TOML allows it to be written (spaces, quoted key, comment).
_RULES_HEADER = re.compile(r"""\s*\[\[\s*(rules|"rules"|'rules')\s*\]\]\s*(#.*)?""")
# Address forms whose letter case carries no meaning: EVM hex (EIP-55 hides a checksum in
# the case) and bech32 (valid all lower or all upper case). Base58 is case-sensitive.
_EVM_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_BECH32 = re.compile(r"(bc|tb|bcrt)1[02-9ac-hj-np-z]{6,87}", re.IGNORECASE)


def canonical(name: str) -> str:
    """One spelling of an address or an asset ("erc20:<address>") for comparisons, so a
    list written in lower case matches the checksummed address a transaction decodes to."""
    prefix, sep, last = name.rpartition(":")
    if _EVM_ADDRESS.fullmatch(last) or _BECH32.fullmatch(last):
        return prefix + sep + last.lower()
    return name


def among(name: str, names: list[str]) -> bool:
    """``name`` is one of ``names``, compared in canonical spelling."""
    wanted = canonical(name)
    return any(canonical(n) == wanted for n in names)


class PolicyFileError(LantauError):
    """A policy file that cannot be used; the message names the line and the field."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.POLICY_FILE_INVALID, message)


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
    max_amount: Amount | None = None
    max_count: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: RuleName
    action: Literal["allow", "deny", "approve"]
    # Conditions; an absent condition holds for every request.
    keys: list[str] = []
    requesters: list[str] = []
    kinds: list[PayloadKind] = []
    # True: the request moves value (parsed, or declared when blind); False: it does not.
    has_transfer: bool | None = None
    # Facts of what moves. For deny and approve rules a condition on movements holds
    # when ANY movement meets it (one bad output is enough to stop a transaction); for
    # allow rules only when EVERY movement does. Amounts compare the total moved (of
    # the rule's assets, when it names some).
    assets: list[str] = []
    amount_above: Amount | None = None
    amount_at_most: Amount | None = None
    destination_in: list[str] = []
    destination_not_in: list[str] = []
    # Facts only a decoded transaction has.
    chains: list[str] = []
    contracts_in: list[str] = []
    contracts_not_in: list[str] = []
    fee_above: Amount | None = None
    # Match only requests whose transaction has an undecoded part (True) or has none
    # (False). Allow and approve rules never match an unknown transaction unless they
    # say unknown = true: what nobody can read is denied by default.
    unknown: bool | None = None
    # Match only blind requests (a raw digest or message) or only decoded ones.
    blind: bool | None = None
    # How the request's key is kept: "hsm" (a token object) or "hsm-wrapped" (sealed
    # material). With amounts: e.g. deny amount_above X with protection = ["hsm-wrapped"].
    protection: list[Protection] = []
    # HD keys: derivation paths (fnmatch; "*" also crosses "/"). A request without a
    # path (any other key type) does not match a rule that names paths.
    paths: list[str] = []
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

    @property
    def restrictive(self) -> bool:
        """Deny and approve stop something: any offending movement is enough."""
        return self.action != "allow"


class Approver(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    public_key: Annotated[str, msgspec.Meta(pattern=whole("[0-9a-fA-F]{64}"))]


class Group(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    approvers: list[str]
    # Need-to-know for approvers: the requesters whose requests this group approves.
    approves_for: list[str]


class SecondFactor(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Second factors of the people in this file (docs/console.md)."""

    # Every vote needs one: a security key's assertion (the console) or, on a vote signed
    # with the Ed25519 key file (lantau approve), a TOTP code policy checks.
    required: bool = False
    # Who enrols a security key or a TOTP authenticator: this many members of this group,
    # never the person it is for. Without a group nobody can enrol one.
    enrol_group: str | None = None
    enrol_quorum: Annotated[int, msgspec.Meta(ge=1)] = 2
    # How long a proposed credential waits for its quorum.
    proposal_window_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 86400)] = 86400
    # HSM ceremonies (domain-init, admit, backups) ask their officer for a second factor.
    ceremonies: bool = False


class Asset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an asset can hold: no transfer is judged (or counted) beyond its supply."""

    decimals: Annotated[int, msgspec.Meta(ge=0, le=36)]
    # Minor units; a string of digits where TOML's 64-bit integers are too small.
    max_amount: (
        Annotated[int, msgspec.Meta(ge=0)]
        | Annotated[str, msgspec.Meta(pattern=whole("[0-9]{1,78}"))]
    )

    def limit(self) -> int:
        return int(self.max_amount)


# Assets every policy knows; a policy file may add others or tighten these.
BUILTIN_ASSETS = {
    "BTC": Asset(decimals=8, max_amount=21_000_000 * 10**8),
    "ETH": Asset(decimals=18, max_amount=str(10**9 * 10**18)),
    "SOL": Asset(decimals=9, max_amount=10**9 * 10**9),
}


class PolicyFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    assets: dict[str, Asset] = {}
    address_lists: dict[str, list[str]] = {}
    approvers: dict[str, Approver] = {}
    groups: dict[str, Group] = {}
    second_factor: SecondFactor = SecondFactor()
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

    def asset(self, symbol: str) -> Asset | None:
        return self._assets.get(canonical(symbol))

    def listed(self, address: str, lists: list[str]) -> bool:
        """``address`` is in one of the named address lists (canonical spelling)."""
        wanted = canonical(address)
        return any(wanted in self._lists[name] for name in lists)

    # Built once per policy text (a sanctions list may hold thousands of entries).
    @cached_property
    def _lists(self) -> dict[str, frozenset[str]]:
        return {
            name: frozenset(canonical(a) for a in entries)
            for name, entries in self.file.address_lists.items()
        }

    @cached_property
    def _assets(self) -> dict[str, Asset]:
        return {canonical(k): v for k, v in {**BUILTIN_ASSETS, **self.file.assets}.items()}


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
    sf = f.second_factor
    if sf.enrol_group is not None:
        if sf.enrol_group not in f.groups:
            raise PolicyFileError(f"[second_factor] enrol_group: no group {sf.enrol_group!r}")
        # The person enrolled never endorses their own key: the quorum needs others.
        size = len(f.groups[sf.enrol_group].approvers)
        if sf.enrol_quorum > size - 1:
            raise PolicyFileError(
                f"[second_factor] enrol_quorum {sf.enrol_quorum} needs more members than "
                f"group {sf.enrol_group!r} has besides the person enrolled ({size - 1})"
            )
    seen: set[str] = set()
    for i, rule in enumerate(f.rules):
        at = f"{_at(lines, i)} (rule {rule.name!r})"
        if rule.name in seen:
            raise PolicyFileError(f"{at}: a rule named {rule.name!r} already exists")
        seen.add(rule.name)
        for listed in (
            *rule.destination_in,
            *rule.destination_not_in,
            *rule.contracts_in,
            *rule.contracts_not_in,
        ):
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
