"""The dev stack's policy file and its three demo approvers (keys in the run directory)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nacl.signing

from libs.secret_files import write_secret

APPROVERS = ("alice", "bob", "carol")
SANCTIONED = "0x000000000000000000000000000000000000dead"
LARGE = 1_000_000  # minor units: above this, two treasury approvers must agree

TEMPLATE = """\
# Lantau dev-stack policy (docs/policy.md explains every field).
version = "dev-1"

[address_lists]
sanctioned = ["{sanctioned}"]

{approvers}
[groups.treasury]
approvers = [{names}]
approves_for = [{requesters}]

[[rules]]
name = "no-sanctioned-destinations"
destination_in = ["sanctioned"]
action = "deny"
reason = "the destination is on the sanctions list"

[[rules]]
name = "large-transfers"
amount_above = {large}
action = "approve"
group = "treasury"
quorum = 2
approval_window_s = 600

[[rules]]
name = "requester-velocity"
has_transfer = true
velocity = {{ per = "requester", window_s = 3600, max_amount = 50000000 }}
action = "approve"
group = "treasury"
quorum = 2

[[rules]]
name = "need-to-know"
action = "allow"
reason = "within limits"
"""


def write(run_dir: Path, requesters: Sequence[str]) -> Path:
    """Make approver keys (``approvers/<name>.key``) and ``policy.toml``; return its path."""
    keys_dir = run_dir / "approvers"
    keys_dir.mkdir(parents=True, exist_ok=True)
    blocks = []
    for name in APPROVERS:
        path = keys_dir / f"{name}.key"
        if path.exists():
            key = nacl.signing.SigningKey(bytes.fromhex(path.read_text().strip()))
        else:
            key = nacl.signing.SigningKey.generate()
            write_secret(path, key.encode().hex() + "\n")
        blocks.append(f'[approvers.{name}]\npublic_key = "{key.verify_key.encode().hex()}"\n')
    policy = run_dir / "policy.toml"
    policy.write_text(
        TEMPLATE.format(
            sanctioned=SANCTIONED,
            approvers="\n".join(blocks),
            names=", ".join(f'"{n}"' for n in APPROVERS),
            requesters=", ".join(f'"{r}"' for r in requesters),
            large=LARGE,
        )
    )
    return policy
