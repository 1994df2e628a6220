"""Coverage-guided fuzzing with atheris (libFuzzer), one target per door.

    python -m tests.fuzz.atheris_targets --list
    python -m tests.fuzz.atheris_targets TARGET [libFuzzer flags, e.g. -max_total_time=60]

Each target checks the same oracles as the hypothesis tests (tests/fuzz/oracles.py).
The corpus grows in .fuzz/corpus/TARGET, seeded on first use with valid encoded
messages and the project's own files; a crash is saved as .fuzz/crashes/TARGET-*. Turn
one into a bytes literal in tests/fuzz/test_regressions.py, then fix the door.

Importing this module does not need atheris: the targets are plain functions, and the
CI tests run each one over its seeds.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import strategies as st

from libs import headers
from libs.config import Config
from libs.policy_file import PolicyFile
from proto import codec
from proto.audit import AuditEntry
from proto.common import RequestId
from proto.subjects import HDR_REQUEST_ID
from tests.fuzz import oracles, seeds
from tests.fuzz.strategies import DECODERS, to_wire, toml_text, valid_for

FUZZ_DIR = seeds.ROOT / ".fuzz"
SEEDS_PER_TARGET = 40
# A config input is TOML text, then optionally this marker and NAME=VALUE lines.
ENV_MARK = "\n\x00\n"
# A headers input is up to five values separated by NUL, given to these in turn.
HEADER_NAMES = (HDR_REQUEST_ID, headers.HDR_STATUS, headers.HDR_PENDING_MESSAGES)
TRACE_HEADERS = ("traceparent", "tracestate")


def _text(data: bytes) -> str:
    # surrogateescape: bytes that are not UTF-8 reach the door as lone surrogates.
    return data.decode("utf-8", "surrogateescape")


def _decode(decoder: codec.Decoder[Any], data: bytes) -> None:
    oracles.decoded(decoder, data)


def _describe(data: bytes) -> None:
    oracles.envelope(data)


def _audit_lines(data: bytes) -> None:
    oracles.audit_lines(_text(data).split("\n"))


def _policy(data: bytes) -> None:
    oracles.policy_file(_text(data))


def _config(data: bytes) -> None:
    text, _, env_lines = _text(data).partition(ENV_MARK)
    env: dict[str, str] = {}
    for line in env_lines.split("\n"):
        name, _, value = line.partition("=")
        env[name] = value
    oracles.config_text(text, env)


def _headers(data: bytes) -> None:
    values = _text(data).split("\x00")
    hdrs = dict(zip((*HEADER_NAMES, *TRACE_HEADERS), values, strict=False))
    oracles.header_values(hdrs)
    for value in values:
        oracles.log_text(value)


TARGETS: dict[str, Callable[[bytes], None]] = {
    **{f"decode_{f.lower()}": functools.partial(_decode, d) for f, d in DECODERS.items()},
    "describe": _describe,
    "audit_lines": _audit_lines,
    "policy": _policy,
    "config": _config,
    "headers": _headers,
}


@functools.cache
def seed_corpus(target: str) -> tuple[bytes, ...]:
    """Valid inputs for ``target``, the same on every run."""
    n = SEEDS_PER_TARGET
    if target.startswith("decode_"):
        decoder = DECODERS[target.removeprefix("decode_").upper()]
        return tuple(codec.encode(m) for m in seeds.examples(valid_for(decoder.type), n))
    if target == "describe":
        any_family = st.sampled_from(sorted(DECODERS)).flatmap(
            lambda f: valid_for(DECODERS[f].type)
        )
        return tuple(codec.encode(m) for m in seeds.examples(any_family, n))
    if target == "audit_lines":
        entries = st.lists(valid_for(AuditEntry), min_size=1, max_size=4)
        return tuple(
            b"\n".join(msgspec.json.encode(to_wire(e)) for e in batch)
            for batch in seeds.examples(entries, n)
        )
    if target == "policy":
        made = seeds.examples(valid_for(PolicyFile).map(toml_text), n)
        return tuple(t.encode() for t in (*seeds.policy_files(), *made))
    if target == "config":
        made = seeds.examples(valid_for(Config).map(toml_text), n)
        env = ENV_MARK + 'LANTAU__NATS__SERVERS=["nats://a:1"]\nLANTAU__HSM_NODES__0__REGION=hk'
        texts = (*seeds.config_files(), *made)
        return tuple(t.encode() for t in texts) + tuple((t + env).encode() for t in texts[:2])
    if target == "headers":
        ids = seeds.examples(valid_for(RequestId), n)
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        return tuple(f"{i}\x00100\x0012\x00{trace}\x00k=v".encode() for i in ids)
    raise KeyError(target)


def _write_seeds(target: str, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for data in seed_corpus(target):
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)


# Coverage feedback comes from these packages' Python code (msgspec itself is C, and
# libFuzzer sees nothing of it). instrument_all() would take every loaded function,
# hypothesis and nats included: a minute of start-up for nothing.
INSTRUMENTED = ("proto", "libs", "services", "tomllib", "zoneinfo", "opentelemetry", "re")


def _instrument(atheris: Any) -> None:
    functions = [
        f
        for f in gc.get_objects()
        if isinstance(f, types.FunctionType)
        and str(getattr(f, "__module__", "")).split(".")[0] in INSTRUMENTED
    ]
    for function in functions:
        atheris.instrument_func(function)
    print(f"INFO: instrumented {len(functions)} functions of {INSTRUMENTED}", file=sys.stderr)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    if argv[1] == "--list":
        print("\n".join(sorted(TARGETS)))
        return 0
    name = argv[1]
    if name not in TARGETS:
        print(f"unknown target {name!r}; --list names them", file=sys.stderr)
        return 2
    corpus = FUZZ_DIR / "corpus" / name
    crashes = FUZZ_DIR / "crashes"
    _write_seeds(name, corpus)
    crashes.mkdir(parents=True, exist_ok=True)
    flags = argv[2:]
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags.append(f"-artifact_prefix={crashes}/{name}-")
    if not any(f.startswith("-timeout=") for f in flags):
        flags.append("-timeout=10")  # an input slower than this is a finding too

    import atheris  # the fuzz extra: `pip install -e '.[fuzz]'`

    _instrument(atheris)
    atheris.Setup([argv[0], *flags, str(corpus)], TARGETS[name])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
