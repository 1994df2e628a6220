"""Every door a message, header or file comes in by: hostile input gets a typed error.

Families come from proto/codec.py's Decoders and values from their msgspec types
(tests/fuzz/strategies.py); what must hold is in tests/fuzz/oracles.py, shared with the
atheris targets. The "ci" profile keeps each test to a few seconds; ``make fuzz`` runs
the "fuzz" profile.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import msgspec
import msgspec.inspect as mi
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs import config, headers
from libs import policy_file as rules
from libs.client import CustodyError, load_signing_key
from proto import codec
from proto.audit import AuditEntry
from proto.subjects import HDR_REQUEST_ID
from services.audit.facts import ENVELOPE_FIELD_LIMIT
from tests.fuzz import atheris_targets, oracles, seeds
from tests.fuzz.strategies import (
    DECODERS,
    HOSTILE_CHARS,
    field_names,
    hostile,
    info,
    json_lines,
    to_wire,
    toml_files,
    valid,
    valid_for,
    walk,
)

PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
FAMILIES = sorted(DECODERS)


# -- decoders ------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_valid_messages_round_trip(family: str) -> None:
    decoder = DECODERS[family]

    @PROFILE
    @given(valid_for(decoder.type))
    def run(message: msgspec.Struct) -> None:
        data = codec.encode(message)
        decoded = oracles.decoded(decoder, data)
        assert decoded == message
        assert codec.encode(decoded) == data

    run()


@pytest.mark.parametrize("family", FAMILIES)
def test_hostile_bytes_decode_or_raise_typed(family: str) -> None:
    decoder = DECODERS[family]

    @PROFILE
    @given(hostile(decoder.type))
    def run(data: bytes) -> None:
        oracles.decoded(decoder, data)

    run()


def test_every_pattern_refuses_a_trailing_newline() -> None:
    """msgspec applies patterns with re.search, where `$` matches before a final newline."""
    types = [d.type for d in DECODERS.values()] + [config.Config, rules.PolicyFile]
    patterned = [
        t for type_ in types for t in walk(info(type_)) if isinstance(t, mi.StrType) and t.pattern
    ]
    assert patterned

    @PROFILE
    @given(st.sampled_from(patterned).flatmap(lambda t: st.tuples(st.just(t), valid(t))))
    def run(case: tuple[mi.StrType, str]) -> None:
        t, good = case
        assert t.pattern is not None and re.search(t.pattern, good)
        assert not re.search(t.pattern, good + "\n")

    run()


# -- the audit's lenient envelope and its JSON lines ----------------------------------

ANY_FAMILY = st.sampled_from(FAMILIES).map(lambda f: DECODERS[f].type)


@PROFILE
@given(ANY_FAMILY.flatmap(lambda t: st.tuples(valid_for(t), hostile(t))))
def test_describe_never_raises(case: tuple[msgspec.Struct, bytes]) -> None:
    message, damaged = case
    oracles.envelope(damaged)
    env = oracles.envelope(codec.encode(message))
    wire = to_wire(message)
    assert env.type == str(wire.get("type", "unknown"))[:ENVELOPE_FIELD_LIMIT]
    if isinstance(wire.get("request_id"), str):
        assert env.request_id == wire["request_id"][:ENVELOPE_FIELD_LIMIT]


@PROFILE
@given(json_lines(AuditEntry))
def test_from_lines_never_raises_but_for_an_export_out_of_order(lines: list[str]) -> None:
    oracles.audit_lines(lines)


# -- files: the policy file, the platform config, a requester's key -------------------


@PROFILE
@given(toml_files(rules.PolicyFile, seeds.policy_files()))
def test_policy_parse_raises_only_policy_file_error(text: str) -> None:
    oracles.policy_file(text)


ENV_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["1", "0", "-3", "true", "[]", '["nats://a:1"]', "{a=1}", "9" * 5000]),
    st.integers(1, 5_000).map(lambda n: "[" * n),
)
ENV_PARTS = st.sampled_from(
    [*(f.upper() for f in field_names(config.Config)), "0", "1", "99", "²", "٣", "x", ""]
)
ENV_NAMES = st.lists(ENV_PARTS, min_size=1, max_size=4).map(lambda p: "LANTAU__" + "__".join(p))


@PROFILE
@given(
    toml_files(config.Config, seeds.config_files()),
    st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=4),
)
def test_config_loads_raises_only_config_error(text: str, env: dict[str, str]) -> None:
    oracles.config_text(text, env)


@PROFILE
@given(st.binary(max_size=80) | st.sampled_from([b"", b"\xff" * 64, b"00" * 32 + b"\n"]))
def test_load_signing_key_raises_only_custody_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.key"
        path.write_bytes(content)
        try:
            key = load_signing_key(path)
        except CustodyError as e:
            text = content.decode("utf-8", "ignore").strip()
            assert len(text) < 16 or text not in str(e), "the error quotes the key file"
            return
        assert isinstance(key, nacl.signing.SigningKey)


# -- headers --------------------------------------------------------------------------

REQUEST_ID = next(
    f.type
    for s in walk(info(codec.REQUEST.type))
    if isinstance(s, mi.StructType)
    for f in s.fields
    if f.name == "request_id"
)
HEADER_VALUES = st.one_of(
    valid(REQUEST_ID),
    valid(REQUEST_ID).flatmap(
        lambda v: st.builds(
            lambda i, c: v[:i] + c + v[i:], st.integers(0, len(v)), st.sampled_from(HOSTILE_CHARS)
        )
    ),
    st.text(max_size=80),
    st.integers(60, 5_000).map(lambda n: "a" * n),
    st.from_regex(r"[0-9]{1,25}", fullmatch=True),
)
HEADER_NAMES = st.sampled_from(
    [HDR_REQUEST_ID, headers.HDR_STATUS, headers.HDR_PENDING_MESSAGES, "traceparent", "tracestate"]
)
HEADERS = st.none() | st.dictionaries(
    HEADER_NAMES | st.text(max_size=10), HEADER_VALUES, max_size=5
)


@PROFILE
@given(HEADERS)
def test_header_values_come_out_safe_or_none(hdrs: dict[str, str] | None) -> None:
    oracles.header_values(hdrs)


@PROFILE
@given(st.text(max_size=400), st.integers(8, 300))
def test_safe_for_log_is_printable_and_bounded(value: str, limit: int) -> None:
    oracles.log_text(value, limit)


# -- the atheris targets work on their seeds (the engine itself runs in `make fuzz`) --


@pytest.mark.parametrize("target", sorted(atheris_targets.TARGETS))
def test_atheris_target_accepts_its_seeds(target: str) -> None:
    corpus = atheris_targets.seed_corpus(target)
    assert corpus
    for data in corpus:
        atheris_targets.TARGETS[target](data)
