"""Rule evaluation, table-driven: the pure function a risk officer's file compiles to."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import nacl.signing
import pytest

from libs.policy_file import PolicyFileError, parse
from proto.requests import SignRequest, Transfer
from services.policy.rules import DEFAULT_DENY, evaluate
from services.policy.velocity import Entry, Window

WEEKDAYS = '"mon", "tue", "wed", "thu", "fri"'
KEYS = {
    n: nacl.signing.SigningKey(bytes([i]) * 32) for i, n in enumerate(["alice", "bob", "carol"], 1)
}

POLICY = f"""
version = "t-1"

[address_lists]
sanctioned = ["0xbad"]
cold = ["bc1cold", "0xcold"]

[approvers.alice]
public_key = "{KEYS["alice"].verify_key.encode().hex()}"
[approvers.bob]
public_key = "{KEYS["bob"].verify_key.encode().hex()}"
[approvers.carol]
public_key = "{KEYS["carol"].verify_key.encode().hex()}"

[groups.treasury]
approvers = ["alice", "bob", "carol"]
approves_for = ["desk-a"]

[[rules]]
name = "no-sanctioned"
destination_in = ["sanctioned"]
action = "deny"
reason = "sanctions list"

[[rules]]
name = "no-blind-signing"
keys = ["desk-a-*"]
has_transfer = false
kinds = ["digest"]
action = "deny"

[[rules]]
name = "outside-cold"
keys = ["desk-a-*"]
destination_not_in = ["cold"]
amount_above = 500
action = "approve"
group = "treasury"
quorum = 2

[[rules]]
name = "night"
assets = ["BTC"]
outside_hours = {{ from = "09:00", to = "18:00", tz = "Asia/Hong_Kong", days = [{WEEKDAYS}] }}
action = "approve"
group = "treasury"
quorum = 3

[[rules]]
name = "desk-velocity"
keys = ["desk-a-*"]
velocity = {{ per = "key", window_s = 3600, max_amount = 1000, max_count = 3 }}
action = "deny"

[[rules]]
name = "desk-b-approvals"
keys = ["desk-b-*"]
action = "approve"
group = "treasury"
quorum = 2

[[rules]]
name = "desk-a"
keys = ["desk-a-*"]
action = "allow"
"""

P = parse(POLICY)
# A Wednesday, 10:00 in Hong Kong, and 22:00 the same day.
DAY = int(datetime(2026, 11, 25, 10, 0, tzinfo=ZoneInfo("Asia/Hong_Kong")).timestamp() * 1000)
NIGHT = DAY + 12 * 3600 * 1000


def req(key="desk-a-1", requester="desk-a", transfer=None, kind="message", payload=b"x" * 32):
    return SignRequest(
        request_id="r1",
        requester=requester,
        key_id=key,
        payload=payload,
        payload_kind=kind,
        transfer=transfer,
        created_at_ms=DAY,
        expires_at_ms=DAY + 1000,
    )


def tx(amount, dest="bc1cold", asset="ETH"):
    return Transfer(asset=asset, amount=amount, destination=dest)


def window(*amounts, at=DAY - 1000):
    return Window([Entry(f"old{i}", at, a) for i, a in enumerate(amounts)])


VEL = "desk-velocity.key.desk-a-1"

CASES = [
    # (name, request, now, windows, action, rule)
    ("sanctioned first", req(transfer=tx(1, "0xbad")), DAY, {}, "deny", "no-sanctioned"),
    ("blind digest", req(kind="digest"), DAY, {}, "deny", "no-blind-signing"),
    ("message without transfer", req(), DAY, {}, "allow", "desk-a"),
    ("small to cold", req(transfer=tx(100)), DAY, {}, "allow", "desk-a"),
    ("large to cold", req(transfer=tx(900)), DAY, {}, "allow", "desk-a"),
    ("over 500 not cold", req(transfer=tx(501, "0xelse")), DAY, {}, "approve", "outside-cold"),
    ("exactly 500 not cold", req(transfer=tx(500, "0xelse")), DAY, {}, "allow", "desk-a"),
    ("BTC by day", req(transfer=tx(10, asset="BTC")), DAY, {}, "allow", "desk-a"),
    ("BTC at night", req(transfer=tx(10, asset="BTC")), NIGHT, {}, "approve", "night"),
    (
        "velocity amount",
        req(transfer=tx(300)),
        DAY,
        {VEL: window(400, 400)},
        "deny",
        "desk-velocity",
    ),
    ("velocity just fits", req(transfer=tx(200)), DAY, {VEL: window(400, 400)}, "allow", "desk-a"),
    ("velocity count", req(transfer=tx(1)), DAY, {VEL: window(1, 1, 1)}, "deny", "desk-velocity"),
    (
        "old entries roll out",
        req(transfer=tx(300)),
        DAY,
        {VEL: window(400, 400, at=DAY - 3601_000)},
        "allow",
        "desk-a",
    ),
    ("unknown key", req(key="other-1"), DAY, {}, "deny", DEFAULT_DENY),
    (
        "group not for requester",
        req(key="desk-b-1", requester="desk-b"),
        DAY,
        {},
        "deny",
        "desk-b-approvals",
    ),
    ("group for requester", req(key="desk-b-1"), DAY, {}, "approve", "desk-b-approvals"),
]


@pytest.mark.parametrize(
    ("name", "request_", "now", "windows", "action", "rule"), CASES, ids=[c[0] for c in CASES]
)
def test_rule_table(name, request_, now, windows, action, rule):
    decision = evaluate(P, request_, now, windows)
    assert (decision.action, decision.rule) == (action, rule), decision.explanation
    assert decision.policy_version.startswith("t-1#")
    if rule != DEFAULT_DENY:
        assert repr(rule) in decision.explanation


def test_explanations_say_why():
    d = evaluate(P, req(transfer=tx(300)), DAY, {VEL: window(400, 400)})
    assert "1100 > 1000" in d.explanation and "per key" in d.explanation
    d = evaluate(P, req(transfer=tx(501, "0xelse")), DAY, {})
    assert d.quorum == 2 and d.group == "treasury" and "2 of 3" in d.explanation
    assert set(d.eligible) == {"alice", "bob", "carol"}
    d = evaluate(P, req(transfer=tx(1, "0xbad")), DAY, {})
    assert "sanctions list" in d.explanation


def test_allowed_requests_are_charged_to_every_window_in_scope():
    d = evaluate(P, req(transfer=tx(100)), DAY, {})
    assert [c.counter for c in d.charges] == [VEL]
    assert evaluate(P, req(transfer=tx(1, "0xbad")), DAY, {}).charges == ()


def test_the_version_names_the_exact_text():
    assert parse(POLICY).version == P.version
    assert parse(POLICY + "\n# a comment\n").version != P.version


BAD = [
    ("version = \n", "not valid TOML"),
    ('version = "x"\n[[rules]]\nname = "a"\naction = "allow"\namount_above = -1\n', "line 2"),
    ('version = "x"\n\n[[rules]]\nname = "a"\naction = "maybe"\n', "line 3"),
    ('version = "x"\n[[rules]]\nname = "a"\naction = "approve"\n', "needs group and quorum"),
    (
        'version = "x"\n[[rules]]\nname = "a"\naction = "deny"\ndestination_in = ["nope"]\n',
        "no address list",
    ),
    (
        'version = "x"\n[[rules]]\nname = "a"\naction = "deny"\n'
        'within_hours = { from = "9:00", to = "18:00", tz = "Asia/Hong_Kong" }\n',
        "not HH:MM",
    ),
    (
        'version = "x"\n[[rules]]\nname = "a"\naction = "deny"\n'
        'within_hours = { from = "09:00", to = "18:00", tz = "Mars/Olympus" }\n',
        "unknown time zone",
    ),
    (
        'version = "x"\n[[rules]]\nname = "a"\naction = "allow"\n'
        '[[rules]]\nname = "a"\naction = "deny"\n',
        "line 5",
    ),
    (
        'version = "x"\n[[rules]]\nname = "a"\naction = "allow"\n'
        'velocity = { per = "key", window_s = 60 }\n',
        "max_amount or max_count",
    ),
    ('version = "x"\n[[rules]]\nname = "a"\naction = "allow"\namount_over = 5\n', "unknown field"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_files_are_refused_naming_the_place(text, expected):
    with pytest.raises(PolicyFileError) as e:
        parse(text)
    assert expected in str(e.value)


def test_quorum_cannot_exceed_the_group():
    text = POLICY.replace("quorum = 3", "quorum = 4")
    with pytest.raises(PolicyFileError, match="quorum 4 is more than group 'treasury' has"):
        parse(text)
