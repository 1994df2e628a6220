"""Custodian keys made once, and the check that a refusal is typed and leaks nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from libs.backup import Custodian, DecryptedShare, ShareEnvelope, custodian_keygen, open_share
from proto.errors import ErrorCode, LantauError

SET = "hk-offline-1"
# Key generation is cheap, but making 16 once keeps hypothesis examples about the sharing.
KEYS: list[tuple[str, bytes]] = [custodian_keygen() for _ in range(16)]
NAMES = [f"custodian-{i}" for i in range(16)]


def custodians(indexes: Iterable[int]) -> list[Custodian]:
    return [Custodian(name=NAMES[i], public_key=KEYS[i][0]) for i in indexes]


def private_key_of(name: str) -> bytes:
    return KEYS[NAMES.index(name)][1]


def open_all(envelopes: list[ShareEnvelope]) -> list[DecryptedShare]:
    return [open_share(e, private_key_of(e.custodian)) for e in envelopes]


def secret_texts(*, mnemonics: Iterable[str] = (), values: Iterable[bytes | str] = ()) -> list[str]:
    """What must never show: every 3-word run of a mnemonic, and each secret value as text."""
    texts: list[str] = []
    for m in mnemonics:
        words = m.split()
        texts += [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]
    for v in values:
        if isinstance(v, str):
            texts.append(v)
        else:
            texts += [v.hex(), repr(v)[2:-1]]
    return texts


def assert_clean(text: str, secrets: Iterable[str]) -> None:
    for s in secrets:
        assert s not in text, "a secret appears in a message or repr"


def refused(
    code: ErrorCode,
    secrets: Iterable[str],
    fn: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> LantauError:
    """Call fn, expect a LantauError with this code whose text carries no secret."""
    with pytest.raises(LantauError) as info:
        fn(*args, **kwargs)
    e = info.value
    assert e.code == code, f"expected {code}, got {e.code}: {e.message}"
    assert_clean(str(e) + repr(e) + e.message, list(secrets))
    return e
