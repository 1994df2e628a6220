"""A backup ceremony that cannot be put on the record does not run, and a set that was
never initialised, or is unknown, is refused with a typed message: no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[nats]
servers = ["nats://127.0.0.1:1"]
connect_timeout_s = 1

[[backup_sets]]
id = "hk-vault"
region = "hk"
token_label = "lantau-hk-vault"
fingerprint = "00112233445566778899aabbccddeeff"
{extra}
"""


def lantau(tmp_path: Path, *args: str, extra: str = "") -> subprocess.CompletedProcess[str]:
    config = tmp_path / "lantau.toml"
    config.write_text(CONFIG.format(extra=extra))
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["backup", "run", "--set", "hk-vault"],
        ["backup", "verify", "--set", "hk-vault"],
        ["backup", "restore", "--set", "hk-vault"],
        ["backup", "admit", "hsm-1", "--set", "hk-vault", "--so-pin-file", "x"],
        ["backup", "reshare", "--set", "hk-vault", "--out-dir", "out"],
    ],
)
def test_no_record_no_ceremony(tmp_path: Path, command: list[str]) -> None:
    share = tmp_path / "alice.share"
    proc = lantau(tmp_path, *command, "--share", str(share), str(tmp_path / "alice.key"))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lantau: CEREMONY_FAILED: refusing to run backup "), proc.stderr
    assert "the audit trail cannot record it" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_set_is_a_config_error(tmp_path: Path) -> None:
    proc = lantau(tmp_path, "backup", "run", "--set", "nowhere")
    assert proc.returncode == 2
    assert "lantau: CONFIG_INVALID: no [[backup_sets]] entry with id 'nowhere'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_set_may_not_be_named_like_a_node(tmp_path: Path) -> None:
    node = '[[hsm_nodes]]\nid = "hk-vault"\ntoken_label = "t"\n'
    proc = lantau(tmp_path, "backup", "run", "--set", "hk-vault", extra=node)
    assert proc.returncode == 2
    assert "hsm node and backup set ids must be distinct: hk-vault" in proc.stderr
