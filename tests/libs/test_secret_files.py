"""Secret files exist only with mode 0600, from the moment they are created."""

from __future__ import annotations

import os
import stat

import pytest

from devkit import demo_policy
from libs.secret_files import write_secret


def test_created_0600_and_existing_files_are_refused(tmp_path):
    path = tmp_path / "k.key"
    old = os.umask(0)  # a permissive umask must not loosen it
    try:
        write_secret(path, "seed")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_secret(path, "other")
    assert path.read_text() == "seed"


def test_replace_recreates_instead_of_reusing_a_looser_file(tmp_path):
    path = tmp_path / "pin"
    path.write_text("old")
    path.chmod(0o644)
    write_secret(path, "new", replace=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "new"


def test_demo_approver_keys_are_0600(tmp_path):
    old = os.umask(0)
    try:
        demo_policy.write(tmp_path, ["desk"])
    finally:
        os.umask(old)
    keys = sorted((tmp_path / "approvers").glob("*.key"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
