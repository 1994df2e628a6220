"""Share and key files: 0600 from the first instant, never overwritten, typed errors on read."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.backup import (
    combine,
    create_backup_set,
    custodian_keygen,
    open_share,
    read_custodian_key,
    read_share,
    write_custodian_key,
    write_share,
)
from libs.backup import files as backup_files
from proto.errors import ErrorCode, LantauError
from tests.backup.helpers import KEYS, SET, custodians, refused

ENVELOPES, CREATED = create_backup_set(SET, custodians(range(3)), 2)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file that comes out 0600 got that mode from the code, not the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_share_file_round_trip(tmp_path: Path, open_umask: None) -> None:
    paths = [tmp_path / f"share-{e.index}.json" for e in ENVELOPES]
    for path, envelope in zip(paths, ENVELOPES, strict=True):
        write_share(path, envelope)
        assert mode(path) == 0o600
        assert read_share(path) == envelope
    opened = [open_share(read_share(p), KEYS[i][1]) for i, p in enumerate(paths)]
    with combine(opened[1:], SET) as got:
        assert got.kek == CREATED.kek


def test_key_file_round_trip(tmp_path: Path, open_umask: None) -> None:
    public, private = custodian_keygen()
    path = tmp_path / "alice.key"
    assert write_custodian_key(path, private) == public
    assert mode(path) == 0o600
    assert read_custodian_key(path) == private


@pytest.mark.parametrize("kind", ["share", "key"])
def test_files_are_born_0600_with_o_excl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The mode is set by the open that creates the file: no chmod, no window."""
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode)

    def no_chmod(*args: object, **kw: object) -> None:
        raise AssertionError("permissions must be set at creation, not after")

    monkeypatch.setattr(backup_files.os, "open", spy_open)
    for name in ("chmod", "fchmod", "lchmod"):
        monkeypatch.setattr(backup_files.os, name, no_chmod, raising=False)
    path = tmp_path / "out"
    _write(kind, path)
    [(flags, created_mode)] = calls
    assert flags & os.O_CREAT and flags & os.O_EXCL
    assert created_mode == 0o600
    assert mode(path) == 0o600


def _write(kind: str, path: Path) -> None:
    if kind == "share":
        write_share(path, ENVELOPES[0])
    else:
        write_custodian_key(path, KEYS[0][1])


@pytest.mark.parametrize("kind", ["share", "key"])
def test_existing_path_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "taken"
    path.write_bytes(b"precious")
    path.chmod(0o644)
    refused(ErrorCode.FILE_EXISTS, (), _write, kind, path)
    assert path.read_bytes() == b"precious" and mode(path) == 0o644
    # A dangling symlink is a path that exists: its target is not created through it.
    link = tmp_path / "link"
    target = tmp_path / "elsewhere"
    link.symlink_to(target)
    refused(ErrorCode.FILE_EXISTS, (), _write, kind, link)
    assert not target.exists()


def test_unwritable_place(tmp_path: Path) -> None:
    refused(ErrorCode.FILE_ERROR, (), write_share, tmp_path / "no-dir" / "s.json", ENVELOPES[0])


def test_write_key_of_wrong_size(tmp_path: Path) -> None:
    refused(ErrorCode.INVALID_FIELD, (), write_custodian_key, tmp_path / "k", b"short")
    assert not (tmp_path / "k").exists()


def _valid_json() -> dict[str, object]:
    return msgspec.to_builtins(ENVELOPES[0])


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b"{}",
        b'{"v": 1}',
        msgspec.json.encode({**_valid_json(), "index": 0}),
        msgspec.json.encode({**_valid_json(), "index": "1"}),
        msgspec.json.encode({**_valid_json(), "ciphertext": "not base64!"}),
        msgspec.json.encode({**_valid_json(), "set_fingerprint": "XYZ"}),
        msgspec.json.encode({**_valid_json(), "custodian": "two words"}),
        msgspec.json.encode(_valid_json())[:-10],
        b" " * (backup_files.MAX_FILE_BYTES + 1),
    ],
)
def test_garbled_share_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "share.json"
    path.write_bytes(content)
    e = refused(ErrorCode.BAD_SHARE, (), read_share, path)
    assert str(path) in e.message


def test_share_file_of_a_later_format(tmp_path: Path) -> None:
    path = tmp_path / "share.json"
    path.write_bytes(msgspec.json.encode({**_valid_json(), "v": 2}))
    refused(ErrorCode.UNSUPPORTED_VERSION, (), read_share, path)


def test_unreadable_share_files(tmp_path: Path) -> None:
    refused(ErrorCode.FILE_ERROR, (), read_share, tmp_path / "missing.json")
    refused(ErrorCode.FILE_ERROR, (), read_share, tmp_path)  # a directory
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(ErrorCode.FILE_ERROR, (), read_share, fifo)  # and it did not hang


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_share_file_without_read_permission(tmp_path: Path) -> None:
    path = tmp_path / "share.json"
    write_share(path, ENVELOPES[0])
    path.chmod(0)
    refused(ErrorCode.FILE_ERROR, (), read_share, path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
def test_any_share_file_content_gives_an_envelope_or_a_typed_refusal(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "fuzz.json"
    path.write_bytes(content)
    try:
        read_share(path)
    except LantauError as e:
        assert e.code in (ErrorCode.BAD_SHARE, ErrorCode.UNSUPPORTED_VERSION)


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660, 0o602, 0o644])
def test_key_file_others_can_touch_is_refused(tmp_path: Path, loose: int) -> None:
    path = tmp_path / "k"
    write_custodian_key(path, KEYS[0][1])
    path.chmod(loose)
    e = refused(ErrorCode.INSECURE_FILE, [KEYS[0][1].hex()], read_custodian_key, path)
    assert f"{loose:04o}" in e.message


@pytest.mark.parametrize(
    "content",
    [b"", b"zz" * 32, b"ab" * 31, b"ab" * 33, b"\xff" * 64, ("é" * 32).encode()],
)
def test_garbled_key_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    shown = [content.decode(errors="replace")] if content else []
    e = refused(ErrorCode.BAD_KEY_FILE, shown, read_custodian_key, path)
    assert str(path) in e.message


def test_missing_key_file(tmp_path: Path) -> None:
    refused(ErrorCode.FILE_ERROR, (), read_custodian_key, tmp_path / "none")
