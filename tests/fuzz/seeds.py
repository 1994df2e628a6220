"""Seed inputs: the project's own policy and config files, and valid encoded messages."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from devkit import demo_policy
from libs import config

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def policy_files() -> tuple[str, ...]:
    """Every policy file the project ships or documents."""
    docs = (ROOT / "docs" / "policy.md").read_text()
    demo = demo_policy.TEMPLATE.format(
        sanctioned=demo_policy.SANCTIONED,
        approvers="".join(
            f'[approvers.{n}]\npublic_key = "{i:02x}{"ab" * 31}"\n'
            for i, n in enumerate(demo_policy.APPROVERS)
        ),
        names=", ".join(f'"{n}"' for n in demo_policy.APPROVERS),
        requesters='"desk-a"',
        large=demo_policy.LARGE,
    )
    return (
        (ROOT / "deploy" / "docker" / "policy.toml").read_text(),
        demo,
        *re.findall(r"```toml\n(.*?)```", docs, re.S),
    )


@functools.cache
def config_files() -> tuple[str, ...]:
    return ((ROOT / "deploy" / "docker" / "lantau.toml").read_text(), config.dump(config.Config()))


def examples(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """``n`` values drawn from ``strategy``, the same ones on every run."""
    out: list[Any] = []

    @seed(0)
    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out
