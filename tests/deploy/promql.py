"""Check PromQL expressions against the metric catalogue of libs/metrics.py.

The catalogue is read from the collectors libs.metrics defines: every series name a
service exports (counters with ``_total``, histograms with ``_bucket``/``_sum``/
``_count``), its label names and, for histograms, its bucket bounds. An expression is
tokenised and walked just enough to find its selectors (metric name and label
matchers) and its grouping clauses (``by``, ``without``, ``on``, ``ignoring``,
``group_left``, ``group_right``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from prometheus_client.metrics import MetricWrapperBase

from libs import metrics

# Labels Prometheus adds to every scraped series (job, instance) and `up`'s own.
TARGET_LABELS = frozenset({"job", "instance"})
EXTRA_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}

_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"})
# Aggregations may be followed by their grouping clause instead of "(": `sum by (x) (...)`.
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Series:
    name: str
    family: str
    labels: frozenset[str]
    buckets: tuple[float, ...] = ()


def catalogue() -> dict[str, Series]:
    """Every series name libs/metrics.py makes the services export."""
    out: dict[str, Series] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        name, kind, labels = obj._name, obj._type, frozenset(obj._labelnames)
        if kind == "counter":
            out[name + "_total"] = Series(name + "_total", name, labels)
        elif kind == "gauge":
            out[name] = Series(name, name, labels)
        elif kind == "histogram":
            bounds = tuple(float(b) for b in getattr(obj, "_upper_bounds"))  # noqa: B009
            out[name + "_bucket"] = Series(name + "_bucket", name, labels | {"le"}, bounds)
            out[name + "_sum"] = Series(name + "_sum", name, labels)
            out[name + "_count"] = Series(name + "_count", name, labels)
        else:  # summaries, infos, enums: none today; make the checker say so
            raise AssertionError(f"catalogue: unhandled metric type {kind} for {name}")
    for name, labels in EXTRA_SERIES.items():
        out[name] = Series(name, name, labels)
    return out


@dataclass
class Parsed:
    selectors: list[tuple[str | None, list[tuple[str, str, str]]]] = field(default_factory=list)
    grouping: list[str] = field(default_factory=list)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenise PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    return out


def _unquote(s: str) -> str:
    if s[0] == "`":
        return s[1:-1]
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


def parse(expr: str) -> Parsed:
    toks, parsed, i = _tokens(expr), Parsed(), 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in _GROUPING:
            i += 1
            if nxt == "(":
                i += 1
                while toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        parsed.grouping.append(toks[i][1])
                    i += 1
                i += 1
            continue
        if kind == "ident" and nxt == "(":  # a function or aggregation
            i += 1
            continue
        if kind == "ident" and (text in _KEYWORDS or text in _AGGREGATIONS):
            i += 1
            continue
        if text == "[":  # range or subquery
            while toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if kind == "ident" or text == "{":
            name = text if kind == "ident" else None
            i += 1 if kind == "ident" else 0
            matchers: list[tuple[str, str, str]] = []
            if i < len(toks) and toks[i][1] == "{":
                i += 1
                while toks[i][1] != "}":
                    if toks[i][1] == ",":
                        i += 1
                        continue
                    label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2]
                    if value[0] != "string":
                        raise ValueError(f"matcher {label}{op} needs a string in {expr!r}")
                    matchers.append((label, op, _unquote(value[1])))
                    i += 3
                i += 1
            parsed.selectors.append((name, matchers))
            continue
        i += 1
    return parsed


def problems(expr: str, known: dict[str, Series] | None = None) -> list[str]:
    """What is wrong with the metric names and labels of one expression (empty: nothing)."""
    known = catalogue() if known is None else known
    parsed, found, labels = parse(expr), [], set(TARGET_LABELS)
    for name, matchers in parsed.selectors:
        if name is None:
            for label, op, value in matchers:
                if label == "__name__" and op == "=":
                    name = value
            if name is None:
                found.append(f"selector without a metric name in {expr!r}")
                continue
        series = known.get(name)
        if series is None:
            found.append(f"{name} is not exported by libs/metrics.py")
            continue
        labels |= series.labels
        for label, op, value in matchers:
            if label not in series.labels | TARGET_LABELS | {"__name__"}:
                found.append(f"{name} has no label {label!r}")
            if label == "le" and op == "=":
                bound = math.inf if value == "+Inf" else float(value)
                if bound not in series.buckets:
                    found.append(f"{name} has no bucket le={value!r} (buckets {series.buckets})")
    for label in parsed.grouping:
        if label not in labels:
            found.append(f"grouping label {label!r} is on none of the series of {expr!r}")
    return found
