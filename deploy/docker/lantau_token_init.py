#!/usr/bin/env python3
"""Initialise an HSM node's SoftHSM token on first start; leave an existing one alone.

Installed in the image as ``lantau-token-init`` and run by the container entrypoints
(``lantau-hsm-node``, ``lantau-key-ceremony``). The node's ``softhsm_conf`` in the
config names a file on the node's own volume; this writes it when absent (token
directory ``tokens/`` beside it) and runs ``softhsm2-util --init-token`` when no token
with the node's label exists yet. The user PIN is read as the services read it
(``pin_file``/``pin_env``); the SO PIN from ``--so-pin-file``, by default
``<node>-so-pin`` beside the user PIN file. PINs are never printed.

    lantau-token-init --config /etc/lantau/lantau.toml --node hsm-1
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from libs import config as config_mod
from libs.config import ConfigError, read_pin

_LABEL = re.compile(r"^\s*Label:\s*(.*?)\s*$", re.MULTILINE)


def _so_pin(path: Path) -> str:
    try:
        pin = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read SO PIN file {path}: {e.strerror}") from None
    if not pin:
        raise ConfigError(f"SO PIN file {path} is empty")
    return pin


def ensure_token(config_path: str, node_id: str, so_pin_file: str | None = None) -> str:
    """Return what was done: "exists", "initialised" or why the token was left alone."""
    node = config_mod.load(config_path).hsm_node(node_id)
    if not node.softhsm_conf:
        # Not a SoftHSM token: a real HSM's token is initialised with its vendor's tools.
        return "left alone (no softhsm_conf: not a SoftHSM token)"
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise ConfigError("softhsm2-util not found (Debian package softhsm2)")
    conf = Path(node.softhsm_conf)
    tokens = conf.parent / "tokens"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not conf.exists():
        conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    shown = subprocess.run(
        [tool, "--show-slots"], env=env, capture_output=True, text=True, check=False
    )
    if shown.returncode != 0:
        raise ConfigError(f"softhsm2-util --show-slots failed: {shown.stderr.strip()}")
    if node.token_label in _LABEL.findall(shown.stdout):
        return "exists"
    if so_pin_file is None:
        if not node.pin_file:
            raise ConfigError(f"hsm node {node_id}: pass --so-pin-file (no pin_file to sit beside)")
        so_pin_file = str(Path(node.pin_file).with_name(f"{node.id}-so-pin"))
    pin, so_pin = read_pin(node), _so_pin(Path(so_pin_file))
    argv = [tool, "--init-token", "--free", "--label", node.token_label]
    init = subprocess.run(
        [*argv, "--pin", pin, "--so-pin", so_pin],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        # The tool's output never contains the PINs (its command line does: not shown).
        raise ConfigError(
            f"softhsm2-util could not initialise {node.token_label}: {init.stderr.strip()}"
        )
    return "initialised"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lantau-token-init", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.environ.get("LANTAU_CONFIG", "/etc/lantau/lantau.toml"))
    p.add_argument("--node", required=True, help="the [[hsm_nodes]] id")
    p.add_argument("--so-pin-file", help="default: <node>-so-pin beside the user PIN file")
    args = p.parse_args(argv)
    try:
        outcome = ensure_token(args.config, args.node, args.so_pin_file)
    except ConfigError as e:
        print(f"lantau-token-init: {e}", file=sys.stderr)
        return 2
    print(f"lantau-token-init: token of {args.node}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
