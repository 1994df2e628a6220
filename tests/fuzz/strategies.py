"""Hypothesis strategies derived from msgspec types: valid values, then hostile ones.

Nothing here names a message. The families are proto/codec.py's Decoders, and every
value comes from walking ``msgspec.inspect.type_info``: Struct fields, tagged unions,
patterns, lengths, bounds, literals. A new message type or field is fuzzed as soon as
it has a decoder; a field type this walker does not know fails loudly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import msgspec.inspect as mi
import tomli_w
from hypothesis import strategies as st

from proto import SCHEMA_VERSION, codec

Strategy = st.SearchStrategy[Any]

# msgpack's integer range: msgspec cannot encode an int outside it.
INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1

DECODERS: dict[str, codec.Decoder[Any]] = {
    name: obj for name, obj in sorted(vars(codec).items()) if isinstance(obj, codec.Decoder)
}

# The only rule a type cannot express: a decoder refuses a schema version newer than its own.
FIELD_OVERRIDES: dict[str, Strategy] = {"v": st.integers(1, SCHEMA_VERSION)}

# Characters that break subjects, KV keys, log lines or regexes anchored with `$`.
HOSTILE_CHARS = [" ", ".", "*", ">", "\n", "\r", "\t", "\x00", "\x1b", "é", "\u2028", "\ufeff"]


class UnknownType(NotImplementedError):
    """A field type the harness cannot generate or check yet: teach strategies.py."""


@functools.cache
def info(type_: Any) -> mi.Type:
    return mi.type_info(type_)


def children(t: mi.Type) -> list[mi.Type]:
    if isinstance(t, mi.StructType):
        return [f.type for f in t.fields]
    if isinstance(t, mi.UnionType):
        return list(t.types)
    if isinstance(t, mi.ListType):
        return [t.item_type]
    if isinstance(t, mi.DictType):
        return [t.key_type, t.value_type]
    return []


def walk(t: mi.Type) -> Iterator[mi.Type]:
    """``t`` and every type nested in it."""
    yield t
    for child in children(t):
        yield from walk(child)


def top_structs(t: mi.Type) -> tuple[type, ...]:
    """The Struct classes a value of ``t`` can be at its top level."""
    if isinstance(t, mi.StructType):
        return (t.cls,)
    if isinstance(t, mi.UnionType):
        return tuple(c for m in t.types for c in top_structs(m))
    return ()


ALL_TAGS = sorted(
    {
        s.tag
        for d in DECODERS.values()
        for s in walk(info(d.type))
        if isinstance(s, mi.StructType) and isinstance(s.tag, str)
    }
)


def to_wire(value: Any) -> Any:
    """The builtin form msgspec encodes (bytes kept as bytes; JSON turns them into base64)."""
    return msgspec.to_builtins(value, builtin_types=(bytes,))


# -- valid values ---------------------------------------------------------------------


def _sizes(lo: int | None, hi: int | None, room: int) -> tuple[int, int]:
    lo = lo or 0
    return lo, min(hi, lo + room) if hi is not None else lo + room


def _int_bounds(t: mi.IntType) -> tuple[int, int]:
    lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else INT_MIN)
    hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else UINT_MAX)
    return lo, hi


def valid(t: mi.Type) -> Strategy:
    """Values of type ``t`` that satisfy every constraint it declares."""
    if isinstance(t, mi.StructType):
        fields = {
            f.name: FIELD_OVERRIDES[f.name] if f.name in FIELD_OVERRIDES else valid(f.type)
            for f in t.fields
        }
        required = {f.name: fields[f.name] for f in t.fields if f.required}
        optional = {f.name: fields[f.name] for f in t.fields if not f.required}
        # A Struct may check itself in __post_init__ (unique names, say): such draws
        # are not valid instances, so they are left out.
        return (
            st.fixed_dictionaries(required, optional=optional)
            .map(lambda kw: _build(t.cls, kw))
            .filter(lambda v: v is not None)
        )
    if isinstance(t, mi.UnionType):
        return st.one_of(*(valid(m) for m in t.types))
    if isinstance(t, mi.StrType):
        if t.pattern is not None:
            lo, hi = t.min_length or 0, t.max_length
            return st.from_regex(t.pattern, fullmatch=True).filter(
                lambda s: len(s) >= lo and (hi is None or len(s) <= hi)
            )
        lo, hi = _sizes(t.min_length, t.max_length, 24)
        return st.text(min_size=lo, max_size=hi)
    if isinstance(t, mi.BytesType):
        lo, hi = _sizes(t.min_length, t.max_length, 64)
        return st.binary(min_size=lo, max_size=hi)
    if isinstance(t, mi.IntType):
        lo, hi = _int_bounds(t)
        if t.multiple_of:
            m = t.multiple_of
            return st.integers(-(-lo // m), hi // m).map(lambda k: k * m)
        return st.integers(lo, hi)
    if isinstance(t, mi.FloatType):
        return st.floats(
            min_value=t.ge if t.ge is not None else t.gt,
            max_value=t.le if t.le is not None else t.lt,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
            allow_nan=False,
        )
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.ListType):
        lo, hi = _sizes(t.min_length, t.max_length, 3)
        return st.lists(valid(t.item_type), min_size=lo, max_size=hi)
    if isinstance(t, mi.DictType):
        lo, hi = _sizes(t.min_length, t.max_length, 3)
        return st.dictionaries(valid(t.key_type), valid(t.value_type), min_size=lo, max_size=hi)
    raise UnknownType(f"no strategy for {type(t).__name__}")


@functools.cache
def valid_for(type_: Any) -> Strategy:
    return valid(info(type_))


# -- hostile values -------------------------------------------------------------------

JUNK: Strategy = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT_MIN, UINT_MAX),
    st.floats(),
    st.text(max_size=24),
    st.binary(max_size=24),
    st.lists(st.integers(-5, 5) | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-5, 5), max_size=3),
)
DEPTHS: Strategy = st.sampled_from([100, 1_000, 5_000, 100_000]) | st.integers(1, 3_000)


def deep_bytes(fmt: str, depth: int, kind: str) -> bytes:
    """``depth`` nested arrays or maps, encoded as ``fmt`` (msgpack or json), built as bytes:
    no encoder can produce them (it would hit the same recursion limit)."""
    if fmt == "msgpack":
        opener = {"array": b"\x91", "map": b"\x81\xa1k", "mixed": b"\x91\x81\xa1k"}[kind]
        return opener * depth + b"\xc0"
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "map":
        return b'{"k":' * depth + b"null" + b"}" * depth
    return b'[{"k":' * depth + b"null" + b"}]" * depth


@st.composite
def deep_raw(draw: st.DrawFn, fmt: str) -> msgspec.Raw:
    kind = draw(st.sampled_from(["array", "map", "mixed"]))
    return msgspec.Raw(deep_bytes(fmt, draw(DEPTHS), kind))


def invalid(t: mi.Type, wire: Any) -> Strategy:
    """Values that break a constraint of ``t`` (``wire`` is a valid value to start from)."""
    options: list[Strategy] = []
    if isinstance(t, mi.StrType):
        base = wire if isinstance(wire, str) else ""
        if t.pattern is not None:
            options += [
                st.builds(
                    lambda i, c: base[:i] + c + base[i:],
                    st.integers(0, len(base)),
                    st.sampled_from(HOSTILE_CHARS),
                ),
                st.just(""),
                st.just(base * 70 or "x" * 5000),
            ]
        if t.max_length is not None:
            options.append(st.just("x" * (t.max_length + 1)))
        if t.min_length:
            options.append(st.just(base[: t.min_length - 1]))
    elif isinstance(t, mi.IntType):
        edges = [
            t.ge - 1 if t.ge is not None else None,
            t.gt,
            t.le + 1 if t.le is not None else None,
            t.lt,
        ]
        options.append(st.sampled_from([e for e in edges if e is not None] or [INT_MIN, UINT_MAX]))
        options.append(st.floats(allow_nan=True))
    elif isinstance(t, mi.BytesType):
        if t.max_length is not None:
            options.append(st.just(b"\x00" * (t.max_length + 1)))
        options.append(st.text(max_size=8))
    elif isinstance(t, mi.LiteralType):
        options.append(st.text(max_size=12).filter(lambda s: s not in t.values))
    elif isinstance(t, mi.BoolType):
        options.append(st.sampled_from([0, 1, "true", b"\x01"]))
    options.append(JUNK)
    return st.one_of(*options)


def _member(t: mi.UnionType, wire: Any) -> mi.Type | None:
    """The member of a union that ``wire`` (a valid value) was drawn from."""
    for m in t.types:
        if isinstance(m, mi.StructType) and isinstance(wire, dict):
            if m.tag_field is None or wire.get(m.tag_field) == m.tag:
                return m
        elif not isinstance(m, mi.StructType | mi.NoneType) and wire is not None:
            if not violations(wire, m):
                return m
    return None


@st.composite
def mutate(draw: st.DrawFn, wire: Any, t: mi.Type, fmt: str) -> Any:
    """One structural mutation of ``wire`` somewhere in the tree: a field dropped, a wrong
    type, an out-of-range value, a swapped tag, an unknown field, deep nesting."""
    if isinstance(t, mi.UnionType):
        member = _member(t, wire)
        if member is None or draw(st.integers(0, 9)) == 0:
            return draw(JUNK | deep_raw(fmt))
        return draw(mutate(wire, member, fmt))
    if isinstance(t, mi.StructType) and isinstance(wire, dict) and t.fields:
        out = dict(wire)
        field = draw(st.sampled_from(t.fields))
        ops = ["drop", "junk", "invalid", "unknown", "deep", "descend", "descend"]
        if t.tag_field is not None:
            ops.append("tag")
        op = draw(st.sampled_from(ops))
        name = field.encode_name
        if op == "drop":
            out.pop(name, None)
        elif op == "junk":
            out[name] = draw(JUNK)
        elif op == "invalid":
            out[name] = draw(invalid(field.type, out.get(name)))
        elif op == "unknown":
            known = {f.encode_name for f in t.fields} | {t.tag_field}
            extra = draw(st.text(max_size=8).filter(lambda k: k not in known))
            out[extra] = draw(JUNK | deep_raw(fmt))
        elif op == "deep":
            out[name] = draw(deep_raw(fmt))
        elif op == "tag" and t.tag_field is not None:
            out[t.tag_field] = draw(st.sampled_from(ALL_TAGS) | st.text(max_size=12) | JUNK)
        elif name in out:
            out[name] = draw(mutate(out[name], field.type, fmt))
        return out
    if isinstance(t, mi.ListType) and isinstance(wire, list) and wire:
        out_list = list(wire)
        i = draw(st.integers(0, len(out_list) - 1))
        out_list[i] = draw(mutate(out_list[i], t.item_type, fmt))
        return out_list
    if isinstance(t, mi.DictType) and isinstance(wire, dict) and wire:
        out_map = dict(wire)
        key = draw(st.sampled_from(sorted(out_map, key=repr)))
        if draw(st.booleans()):
            out_map[key] = draw(mutate(out_map[key], t.value_type, fmt))
        else:
            out_map[draw(invalid(t.key_type, key))] = out_map.pop(key)
        return out_map
    return draw(invalid(t, wire))


def _encode(fmt: str) -> Callable[[Any], bytes]:
    return msgspec.msgpack.encode if fmt == "msgpack" else msgspec.json.encode


@st.composite
def mutated(draw: st.DrawFn, type_: Any, fmt: str = "msgpack") -> bytes:
    """A valid value of ``type_`` with one or more structural mutations, encoded."""
    t = info(type_)
    wire = to_wire(draw(valid_for(type_)))
    for _ in range(draw(st.integers(1, 3))):
        wire = draw(mutate(wire, t, fmt))
    try:
        return _encode(fmt)(wire)
    except (OverflowError, TypeError, msgspec.EncodeError):
        # A junk dict key msgpack can hold but JSON cannot, and the like.
        return _encode(fmt)(to_wire(draw(valid_for(type_))))


@st.composite
def corrupted(draw: st.DrawFn, data: bytes, fmt: str = "msgpack") -> bytes:
    """``data`` damaged at the byte level."""
    op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "prefix-deep", "random"]))
    i = draw(st.integers(0, len(data)))
    if op == "truncate":
        return data[:i]
    if op == "flip" and data:
        j = min(i, len(data) - 1)
        return data[:j] + bytes([data[j] ^ draw(st.integers(1, 255))]) + data[j + 1 :]
    if op == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    if op == "delete":
        return data[:i] + data[i + draw(st.integers(1, 8)) :]
    if op == "prefix-deep":
        kind = draw(st.sampled_from(["array", "map"]))
        depth = draw(DEPTHS)
        # The openers alone: ``data`` becomes the innermost value.
        nested = deep_bytes(fmt, depth, kind)
        closer = b"\xc0" if fmt == "msgpack" else (b"]" if kind == "array" else b"null")
        return nested[: nested.index(closer)] + data
    return draw(st.binary(max_size=64))


def hostile(type_: Any, fmt: str = "msgpack") -> Strategy:
    """Bytes a decoder of ``type_`` must survive: mutated, corrupted or random."""
    encode = _encode(fmt)
    return st.one_of(
        mutated(type_, fmt),
        valid_for(type_).map(lambda v: encode(to_wire(v))).flatmap(lambda b: corrupted(b, fmt)),
        st.binary(max_size=128),
    )


# -- the oracle: does a decoded value satisfy its declared type? ----------------------


def violations(value: Any, t: mi.Type, path: str = "$") -> list[str]:
    """Every way ``value`` breaks type ``t``, checked strictly: patterns must match the
    whole string (``re.fullmatch``), whatever the anchors say."""
    if isinstance(t, mi.AnyType):
        return []
    if isinstance(t, mi.NoneType):
        return [] if value is None else [f"{path}: {value!r} is not None"]
    if isinstance(t, mi.BoolType):
        return [] if isinstance(value, bool) else [f"{path}: not a bool"]
    if isinstance(t, mi.IntType):
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: not an int"]
        # Only the declared bounds: msgpack holds 64 bits, JSON any int up to 4300 digits.
        ok = (
            (t.ge is None or value >= t.ge)
            and (t.gt is None or value > t.gt)
            and (t.le is None or value <= t.le)
            and (t.lt is None or value < t.lt)
            and not (t.multiple_of and value % t.multiple_of)
        )
        return [] if ok else [f"{path}: {value} out of range"]
    if isinstance(t, mi.FloatType):
        if not isinstance(value, float | int) or isinstance(value, bool):
            return [f"{path}: not a float"]
        ok = (
            (t.ge is None or value >= t.ge)
            and (t.gt is None or value > t.gt)
            and (t.le is None or value <= t.le)
            and (t.lt is None or value < t.lt)
        )
        return [] if ok else [f"{path}: {value} out of range"]
    if isinstance(t, mi.StrType | mi.BytesType):
        kind = str if isinstance(t, mi.StrType) else bytes
        if not isinstance(value, kind):
            return [f"{path}: not {kind.__name__}"]
        out = []
        if t.min_length is not None and len(value) < t.min_length:
            out.append(f"{path}: shorter than {t.min_length}")
        if t.max_length is not None and len(value) > t.max_length:
            out.append(f"{path}: longer than {t.max_length}")
        pattern = getattr(t, "pattern", None)
        if pattern is not None and not re.fullmatch(pattern, value):
            out.append(f"{path}: {value!r} does not wholly match {pattern!r}")
        return out
    if isinstance(t, mi.LiteralType):
        return [] if value in t.values else [f"{path}: {value!r} not in {t.values}"]
    if isinstance(t, mi.ListType):
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        out = [f"{path}: bad length"] if not _len_ok(value, t) else []
        for i, item in enumerate(value):
            out += violations(item, t.item_type, f"{path}[{i}]")
        return out
    if isinstance(t, mi.DictType):
        if not isinstance(value, dict):
            return [f"{path}: not a dict"]
        out = [f"{path}: bad length"] if not _len_ok(value, t) else []
        for k, v in value.items():
            out += violations(k, t.key_type, f"{path} key {k!r}")
            out += violations(v, t.value_type, f"{path}[{k!r}]")
        return out
    if isinstance(t, mi.UnionType):
        if any(not violations(value, m, path) for m in t.types):
            return []
        return [f"{path}: {type(value).__name__} fits no member of the union"]
    if isinstance(t, mi.StructType):
        if type(value) is not t.cls:
            return [f"{path}: not a {t.cls.__name__}"]
        out = []
        for f in t.fields:
            out += violations(getattr(value, f.name), f.type, f"{path}.{f.encode_name}")
        return out
    raise UnknownType(f"{path}: no check for {type(t).__name__}")


def _len_ok(value: Any, t: mi.ListType | mi.DictType) -> bool:
    return (t.min_length is None or len(value) >= t.min_length) and (
        t.max_length is None or len(value) <= t.max_length
    )


# -- text formats: TOML files and JSON lines ------------------------------------------


def _drop_none(value: Any) -> Any:
    """TOML has no null: an absent key is how it says None."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def toml_text(value: Any) -> str:
    return tomli_w.dumps(_drop_none(to_wire(value)))


def field_names(type_: Any) -> list[str]:
    """Every key a file of ``type_`` may hold, at any depth."""
    return sorted(
        {f.encode_name for s in walk(info(type_)) if isinstance(s, mi.StructType) for f in s.fields}
    )


# TOML values that stress a reader: deep nesting, integers past Python's 4300-digit
# str->int limit, odd strings, wrong types. Keys come from the type being fuzzed.
TOML_VALUES: Strategy = st.one_of(
    st.sampled_from(
        ["1", "-1", "0", "1e999", "nan", "true", '""', "[]", "{}", '"00:00"', '"24:60"']
    ),
    DEPTHS.map(lambda n: "[" * min(n, 5_000) + "]" * min(n, 5_000)),
    DEPTHS.map(lambda n: "{a=" * min(n, 5_000) + "1" + "}" * min(n, 5_000)),
    st.integers(4_000, 6_000).map(lambda n: "9" * n),
    st.text(max_size=300).map(lambda s: tomli_w.dumps({"v": s})[4:-1]),
    st.integers(0, 400).map(lambda n: '"' + "a/" * n + '"'),
)


@st.composite
def toml_mutated(draw: st.DrawFn, text: str, keys: list[str]) -> str:
    """``text`` with a line dropped, doubled or moved, a hostile line inserted, a
    character inserted, or cut short."""
    lines = text.split("\n")
    op = draw(st.sampled_from(["drop", "dup", "move", "insert", "insert", "char", "cut"]))
    i = draw(st.integers(0, len(lines) - 1))
    if op == "drop":
        del lines[i]
    elif op == "dup":
        lines.insert(i, lines[i])
    elif op == "move":
        lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop(i))
    elif op == "insert":
        key = draw(st.sampled_from(keys))
        header = draw(st.sampled_from(["", f"[{key}]", f"[[{key}]]", f"[[ {key} ]]  # c"]))
        line = draw(st.sampled_from([f"{key} = ", f'"{key}" = ', header])) + (
            draw(TOML_VALUES) if not header or not draw(st.booleans()) else ""
        )
        lines.insert(i, line)
    elif op == "char":
        j = draw(st.integers(0, len(lines[i])))
        c = draw(st.sampled_from([*HOSTILE_CHARS, "\ud800", "[", "]", "=", '"', "#"]))
        lines[i] = lines[i][:j] + c + lines[i][j:]
    else:
        return text[: draw(st.integers(0, len(text)))]
    return "\n".join(lines)


def toml_files(type_: Any, seeds: tuple[str, ...] = ()) -> Strategy:
    """TOML texts for a file decoded as ``type_``: valid, mutated, seeds mutated, random."""
    keys = field_names(type_)
    valid_text = valid_for(type_).map(toml_text)
    bases = (valid_text | st.sampled_from(seeds)) if seeds else valid_text
    return st.one_of(
        valid_text,
        bases.flatmap(lambda t: toml_mutated(t, keys)),
        bases.flatmap(lambda t: toml_mutated(t, keys)).flatmap(lambda t: toml_mutated(t, keys)),
        st.text(max_size=200),
    )


def json_lines(type_: Any) -> Strategy:
    """Lists of lines: JSON of valid values, mutated or damaged ones, blanks and junk."""
    encode = msgspec.json.encode
    good = valid_for(type_).map(lambda v: encode(to_wire(v)).decode())
    bad = st.one_of(
        mutated(type_, "json").map(lambda b: b.decode()),
        good.flatmap(lambda s: corrupted(s.encode(), "json")).map(
            lambda b: b.decode("utf-8", "surrogateescape")
        ),
        DEPTHS.map(lambda n: "[" * n + "]" * n),
        st.text(max_size=40),
        st.just("   "),
    )
    return st.lists(st.one_of(good, good, bad), max_size=6)


def _build(cls: Any, kw: dict[str, Any]) -> Any:
    try:
        return cls(**kw)
    except msgspec.ValidationError:
        return None
