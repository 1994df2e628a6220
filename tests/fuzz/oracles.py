"""What must hold for any input at each door; shared by the hypothesis tests and the
atheris targets. Each function raises AssertionError (or the escaping exception) when
the door misbehaves and returns quietly otherwise."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from nats.js.kv import VALID_KEY_RE

from libs import config, headers, tracing
from libs import policy_file as rules
from libs.audit.export import from_lines
from libs.audit.trail import Keys
from libs.audit.verify import verify
from proto import SCHEMA_VERSION, codec
from proto.audit import AuditEntry
from proto.errors import ErrorCode, LantauError
from proto.subjects import HDR_REQUEST_ID, result_subject
from services.audit.facts import (
    ENVELOPE_FIELD_LIMIT,
    _Envelope,
    checkpoint_echo,
    describe,
)
from services.audit.facts import (
    envelope as read_envelope,
)
from tests.fuzz.strategies import info, top_structs, violations

DECODE_CODES = {
    ErrorCode.MALFORMED_MESSAGE,
    ErrorCode.WRONG_MESSAGE_TYPE,
    ErrorCode.INVALID_FIELD,
    ErrorCode.UNSUPPORTED_VERSION,
}
# nats-py refuses a control line (HPUB <subject> <reply> <sizes>) longer than this.
NATS_MAX_CONTROL_LINE = 1024
# What RequestId means, written out independently of proto/common.py.
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def decoded(decoder: codec.Decoder[Any], data: bytes) -> Any:
    """Decode; a result must be a Struct of the family that satisfies its declared type
    and reads back the same once re-encoded, a failure a LantauError with a decoding
    code and a one-line sentence. Returns the message or None."""
    try:
        message = decoder.decode(data)
    except LantauError as e:
        assert e.code in DECODE_CODES, e
        # One short line: it goes to logs and into the dead-letter record.
        assert isinstance(e.message, str) and e.message and e.message.isprintable(), e
        assert len(e.message) <= 1000, len(e.message)
        return None
    assert decoder.decode(codec.encode(message)) == message
    t = info(decoder.type)
    assert isinstance(message, top_structs(t)), type(message)
    assert not violations(message, t), violations(message, t)
    assert getattr(message, "v", SCHEMA_VERSION) <= SCHEMA_VERSION
    return message


def envelope(data: bytes) -> _Envelope:
    """The envelope and the fact never raise, and what they hold fits in an audit record."""
    env = read_envelope(data)
    assert isinstance(env, _Envelope)
    assert isinstance(env.who(), str)
    for name in env.__struct_fields__:
        value = getattr(env, name)
        assert value is None or (isinstance(value, str) and len(value) <= ENVELOPE_FIELD_LIMIT)
    fact = describe("LANTAU_REQUESTS", 1, data)
    assert (fact.event_type, fact.request_id) == (env.type, env.request_id)
    assert len(fact.actor) <= ENVELOPE_FIELD_LIMIT
    # Never raises either; only a node's receipts can be an echo.
    assert not checkpoint_echo(data) or env.type == "hsm_receipts"
    return env


def audit_lines(lines: list[str]) -> None:
    """from_lines yields one log item per line, an entry or the reason it is none, or raises
    AUDIT_EXPORT_INVALID naming the first line out of order; the verifier never raises."""
    try:
        items = list(from_lines(lines))
    except LantauError as e:
        assert e.code == ErrorCode.AUDIT_EXPORT_INVALID and re.match(r"line (\d+): ", e.message)
        return
    assert len(items) == sum(1 for line in lines if line.strip())
    for item in items:
        if item.entry is not None:
            assert not violations(item.entry, info(AuditEntry)), violations(
                item.entry, info(AuditEntry)
            )
        else:
            assert item.problem
    verify(items, Keys(frozenset(), ()))


def policy_file(text: str) -> None:
    """parse() returns a checked Policy or raises PolicyFileError, nothing else."""
    try:
        policy = rules.parse(text)
    except rules.PolicyFileError as e:
        assert str(e)
        return
    assert not violations(policy.file, info(rules.PolicyFile)), violations(
        policy.file, info(rules.PolicyFile)
    )
    lines = text.split("\n")
    for rule in policy.rules:
        if rule.name in policy.lines:
            assert "rules" in lines[policy.lines[rule.name] - 1]


def config_text(text: str, env: dict[str, str]) -> None:
    """loads() returns a Config that satisfies its type or raises ConfigError."""
    try:
        cfg = config.loads(text, env)
    except config.ConfigError as e:
        assert str(e)
        return
    assert not violations(cfg, info(config.Config)), violations(cfg, info(config.Config))


def subject_token_ok(token: str) -> bool:
    """NATS: a subject token is non-empty printable ASCII without space, '.', '*', '>'."""
    return (
        bool(token)
        and token.isascii()
        and token.isprintable()
        and not any(c in token for c in " .*>")
    )


def header_values(hdrs: Mapping[str, str] | None) -> None:
    """Only ids fit for a subject, a KV key and a control line come out of a header;
    status and counts parse or are None; trace context never breaks a span."""
    rid = headers.request_id_from(hdrs)
    raw = (hdrs or {}).get(HDR_REQUEST_ID)
    if rid is None:
        assert raw is None or not REQUEST_ID.fullmatch(raw), raw
    else:
        assert rid == raw
        assert subject_token_ok(rid)
        assert VALID_KEY_RE.match(rid) and "\n" not in rid
        assert len(f"HPUB {result_subject(rid, rid)} _INBOX.x 0 0\r\n") < NATS_MAX_CONTROL_LINE
    status = headers.status_from(hdrs)
    assert status is None or (len(status) == 3 and status.isascii() and status.isdigit())
    pending = headers.pending_messages_from(hdrs)
    assert pending is None or (isinstance(pending, int) and 0 <= pending < 10**19)
    with tracing.span("fuzz", parent_headers=hdrs):
        pass


def log_text(value: str, limit: int = headers.LOG_LIMIT) -> None:
    """safe_for_log output is printable, bounded, and unchanged when already safe."""
    out = headers.safe_for_log(value, limit)
    assert out.isprintable()
    assert len(out) <= limit + len(f"...(+{len(value)} chars)")
    if value.isprintable() and len(value) <= limit:
        assert out == value
