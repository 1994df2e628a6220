"""Inputs that once crashed a door (a traceback or an untyped exception), kept as bytes.

Each test names what the input did before its fix. The decoder tests run over every
family proto/codec.py has, so a new family inherits them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from libs import config, headers
from libs import policy_file as rules
from libs.audit.export import from_lines
from libs.client import CustodyError, load_signing_key
from libs.policy_store import PolicyStore
from proto import codec
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest
from proto.subjects import HDR_REQUEST_ID
from services.audit.facts import ENVELOPE_FIELD_LIMIT
from services.audit.facts import envelope as describe
from tests.fuzz.strategies import DECODERS

FAMILIES = sorted(DECODERS)

# 100k nested one-entry maps {"k": {"k": ...}}: msgspec skipped the unknown field by
# recursing and raised RecursionError out of Decoder.decode.
DEEP_MAPS = b"\x81\xa1k" * 100_000 + b"\xc0"
# The same with a known top level: {"type": <100k nested arrays>}.
DEEP_IN_TAG = b"\x81\xa4type" + b"\x91" * 100_000 + b"\xc0"
# {"type": "\x80"}: msgspec raised UnicodeDecodeError (msgspec issue #714).
BAD_UTF8_TAG = b"\x81\xa4type\xa1\x80"
# A sign request with request_id "r1\n": `$` in ^[A-Za-z0-9_-]{1,64}$ matched before
# the newline, so it decoded, and lantau.result.r1\n would break the NATS connection.
NEWLINE_ID = (
    b"\x87\xa4type\xacsign_request\xaarequest_id\xa3r1\n\xa9requester\xa4desk\xa6key_id"
    b"\xa2k1\xa7payload\xc4\x04\x01\x01\x01\x01\xadcreated_at_ms\x01\xadexpires_at_ms\x02"
)


def decode_error(decoder: codec.Decoder[Any], data: bytes) -> LantauError:
    with pytest.raises(LantauError) as e:
        decoder.decode(data)
    return e.value


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("data", [DEEP_MAPS, DEEP_IN_TAG], ids=["maps", "in-tag"])
def test_deep_nesting_is_malformed_at_once(family: str, data: bytes) -> None:
    t0 = time.perf_counter()
    error = decode_error(DECODERS[family], data)
    assert time.perf_counter() - t0 < 1.0
    assert error.code in (ErrorCode.MALFORMED_MESSAGE, ErrorCode.INVALID_FIELD)
    if data is DEEP_MAPS:
        assert error.code == ErrorCode.MALFORMED_MESSAGE


@pytest.mark.parametrize("family", FAMILIES)
def test_a_string_not_in_utf8_is_malformed(family: str) -> None:
    error = decode_error(DECODERS[family], BAD_UTF8_TAG)
    assert error.code in (ErrorCode.MALFORMED_MESSAGE, ErrorCode.INVALID_FIELD)


def test_an_id_with_a_trailing_newline_is_refused() -> None:
    assert codec.REQUEST.decode(NEWLINE_ID.replace(b"\xa3r1\n", b"\xa2r1")).request_id == "r1"
    assert decode_error(codec.REQUEST, NEWLINE_ID).code == ErrorCode.INVALID_FIELD


def test_an_error_message_quoting_the_input_stays_one_short_line() -> None:
    # {"type": "create\n...(5000 x)"}: msgspec quotes the invalid tag as it is, and the
    # message went to logs and the dead-letter record with the newline and every byte.
    data = b"\x81\xa4type\xda\x13\x8fcreate\n" + b"x" * 5000
    error = decode_error(codec.REQUEST, data)
    assert error.code == ErrorCode.WRONG_MESSAGE_TYPE
    assert "\n" not in error.message and "create\\x0a" in error.message
    assert len(error.message) < 500


def test_a_missing_field_is_an_invalid_field() -> None:
    # {"request_id": "r"} as a pending approval: was "is not an object".
    error = decode_error(codec.PENDING_APPROVAL, b"\x81\xaarequest_id\xa1r")
    assert error.code == ErrorCode.INVALID_FIELD
    assert "lacks a field" in error.message


@pytest.mark.parametrize("data", [DEEP_MAPS, DEEP_IN_TAG, BAD_UTF8_TAG])
def test_describe_calls_what_it_cannot_read_malformed(data: bytes) -> None:
    assert describe(data).type == "malformed"


def test_describe_bounds_what_goes_into_the_audit_record() -> None:
    # A 1 MiB request id would have made the audit record bigger than NATS's max payload.
    huge = codec.encode(
        SignRequest(
            request_id="r" * 1_000_000,
            requester="d",
            key_id="k",
            payload=b"",
            created_at_ms=0,
            expires_at_ms=0,
        )
    )
    env = describe(huge)
    assert env.type == "sign_request"
    assert env.request_id == "r" * ENVELOPE_FIELD_LIMIT


@pytest.mark.parametrize(
    "line",
    ["[" * 100_000, '{"k":' * 100_000, '{"type": "audit_record", "actor": "\ud800"}'],
    ids=["deep-array", "deep-object", "lone-surrogate"],
)
def test_from_lines_names_the_line(line: str) -> None:
    (item,) = from_lines(["", line])
    assert item.entry is None and item.problem.startswith("line 2 of the export is unreadable")


# -- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a" * 5000, "a b", "a.b", "a*", ">", "a\r\nPUB x 1", "a\x00", "é", "ab\n", "", "a" * 65],
)
def test_a_request_id_header_unfit_for_a_subject_is_dropped(value: str) -> None:
    assert headers.request_id_from({HDR_REQUEST_ID: value}) is None


def test_a_valid_request_id_header_is_kept() -> None:
    assert headers.request_id_from({HDR_REQUEST_ID: "r-1_A"}) == "r-1_A"
    assert headers.request_id_from({"Other": "x"}) is None
    assert headers.request_id_from(None) is None


def test_safe_for_log_escapes_and_truncates() -> None:
    assert headers.safe_for_log("a\nb\x1b[31m\u202e") == r"a\x0ab\x1b[31m\u202e"
    assert headers.safe_for_log("x" * 1000, 10) == "x" * 10 + "...(+990 chars)"


@pytest.mark.parametrize("value", ["-1", "1_000", "١٢", " 3", "9" * 5000, "abc"])
def test_a_pending_count_that_int_would_misread_is_none(value: str) -> None:
    # int() took "1_000" and "١٢", and raised ValueError on the rest.
    assert headers.pending_messages_from({headers.HDR_PENDING_MESSAGES: value}) is None
    assert headers.pending_messages_from({headers.HDR_PENDING_MESSAGES: "12"}) == 12


# -- the policy file ----------------------------------------------------------------------

RULE = '[[rules]]\nname = "a"\naction = "allow"\n'


@pytest.mark.parametrize(
    "text",
    [
        # RecursionError from tomllib.
        "x = " + "[" * 5000 + "]" * 5000,
        "x = " + "{a=" * 5000 + "1" + "}" * 5000,
        # ValueError: past Python's 4300-digit int limit.
        'version = "a"\nx = ' + "9" * 5000,
        # UnicodeEncodeError when hashing a text with a lone surrogate.
        'version = "a"\n# \ud800\n',
        # IndexError: rules as an inline array have no [[rules]] line to name.
        'version = "a"\nrules = [{name = "a", action = "allow", group = "g"}]\n',
        # IndexError: a [[rules]] header with a comment was not counted.
        'version = "a"\n[[rules]] # first\nname = "a"\naction = "allow"\ngroup = "g"\n',
        # OSError from ZoneInfo: a name too long for a path, a directory of zones.
        f'version = "a"\n{RULE}within_hours = {{from="00:00", to="01:00", tz="{"a" * 300}"}}\n',
        f'version = "a"\n{RULE}within_hours = {{from="00:00", to="01:00", tz="America"}}\n',
    ],
)
def test_policy_parse_raises_only_policy_file_error(text: str) -> None:
    with pytest.raises(rules.PolicyFileError):
        rules.parse(text)


def test_policy_errors_name_the_line_of_a_commented_header() -> None:
    text = 'version = "a"\n\n[[ rules ]]  # first\nname = "a"\naction = "allow"\ngroup = "g"\n'
    with pytest.raises(rules.PolicyFileError, match=r"POLICY_FILE_INVALID: line 3 "):
        rules.parse(text)


def test_policy_time_must_be_ascii_hh_mm() -> None:
    # `\d` took Arabic-Indic digits; `$` took a final newline.
    for bad in ("\u0661\u0660:\u0660\u0660", "10:00\\n"):
        text = f'version = "a"\n{RULE}within_hours = {{from="{bad}", to="11:00", tz="UTC"}}\n'
        with pytest.raises(rules.PolicyFileError, match="is not HH:MM"):
            rules.parse(text)


def test_policy_store_refuses_a_file_not_in_utf8(tmp_path: Path) -> None:
    # UnicodeDecodeError escaped reload() and ended the watch loop.
    path = tmp_path / "policy.toml"
    path.write_bytes(b'version = "\xff"\n')
    assert PolicyStore(str(path)).reload() is False


# -- the config file ------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"LANTAU__NATS__SERVERS": "[" * 5000},  # RecursionError from tomllib
        {"LANTAU__NATS__RETENTION_DAYS": "9" * 5000},  # ValueError: 4300-digit limit
        {"LANTAU__NATS__SERVERS": "[1]", "LANTAU__NATS__SERVERS__0__X": "1"},  # TypeError
        {"LANTAU__NATS__SERVERS__²": "1"},  # int("²") after isdigit() said yes
        # A name with a byte that is not UTF-8, as os.environ holds it: msgspec.convert
        # raised UnicodeEncodeError matching the key to a field (found by atheris).
        {"LANTAU__NATS__S\udcad": "1"},
    ],
)
def test_config_env_overrides_raise_only_config_error(env: dict[str, str]) -> None:
    with pytest.raises(config.ConfigError):
        config.loads("", env)


def test_config_text_with_a_lone_surrogate_is_config_error() -> None:
    with pytest.raises(config.ConfigError, match="line 2"):
        config.loads('[logging]\n"l\udcad" = 1\n', {})


def test_config_files_raise_only_config_error(tmp_path: Path) -> None:
    not_utf8 = tmp_path / "a.toml"
    not_utf8.write_bytes(b"\xff\xfe")
    deep = tmp_path / "b.toml"
    deep.write_text("x = " + "[" * 3000 + "]" * 3000)
    for path in (not_utf8, deep, tmp_path):  # UnicodeDecodeError, RecursionError, IsADirectory
        with pytest.raises(config.ConfigError):
            config.load(path, env={})


def test_load_signing_key_raises_only_custody_error(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(b"\xff" * 64)  # UnicodeDecodeError
    for path in (key, tmp_path):  # IsADirectoryError
        with pytest.raises(CustodyError):
            load_signing_key(path)
