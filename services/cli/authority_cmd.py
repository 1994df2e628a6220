"""``lantau authority create``: the ceremony that makes a signing authority's key.

Policy signs every order and the backup service every clone; the hsm-nodes believe
only the public keys pinned in ``[evidence]``. Rotating policy's key: create a new one
on its token, add the printed key to ``[evidence] policy_keys`` on every node (old and
new pinned together), point ``[policy] authority.key_label`` at the new key and restart
policy, then move the old key to ``retired_policy_keys`` (docs/security.md).
"""

from __future__ import annotations

import argparse

from libs import config as config_mod
from libs.hsm import authority
from services.cli.usage import UsageError


def cmd_create(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    section = cfg.policy.authority if args.role == "policy" else cfg.backup.authority
    if section is None or not section.token_label:
        raise UsageError(f"[{args.role}] authority names no token to create a key in")
    label = args.label or section.key_label
    if not label:
        raise UsageError("give --label (or set key_label in the config)")
    print(authority.create_token_key(section, label))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("authority", help="signing authorities' keys (SO ceremonies)")
    actions = top.add_subparsers(dest="authority", required=True)
    p = actions.add_parser("create", help="make a new authority key in its token; print it")
    p.add_argument("--config", required=True)
    p.add_argument("--role", choices=["policy", "backup"], default="policy")
    p.add_argument("--label", help="the new key's label (default: the configured key_label)")
    p.set_defaults(fn=cmd_create)
