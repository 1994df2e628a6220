"""The dev stack's policy file and its three demo approvers (keys in the run directory)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import nacl.signing

from libs.secret_files import write_secret

APPROVERS = ("alice", "bob", "carol")
# Lower case on purpose: lists match the checksummed address a transaction decodes to.
SANCTIONED = "0x000000000000000000000000000000000000dead"
SANCTIONED_BTC = "tb1qmtlr7tmemgss5tvuu99w4rmnwlun3kjgna85cc"
SANCTIONED_SOL = "ErLYdmeUToKK2sK6AibvjCL2dW9rjH2vv3w1TshDWLM"
COLD_EVM = "0x8cb805e3c668CcC27EbB1FB2C6a452B2002AA80E"
COLD_BTC = "tb1qpehjlvrussx258tayfjkgmakkaz6n7l5l5zk0n"
COLD_SOL = "4pQepS8gAobfPiMtBH1qwgBgQDVUajPpqQtVKUgKFJ1Y"
# The demo's ERC-20 token (6 decimals) the desk may move; another the policy knows but
# the desk may not move; and an SPL mint (6 decimals) on Solana.
TOKEN = "0xa82cF11Eb19C25433FDa5133f68e82a46243916f"
OTHER_TOKEN = "0x1e3945Ab88b73766DeC5229d961C7cE265B6f303"
MINT = "BKoGKbT4NbdyEkL7JRrBovd9Mk13LpwA8PTazVegduqg"
EVM_CHAINS = ("eip155:1", "eip155:11155111")
BTC_NETWORK = "testnet"
SOL_CLUSTER = "solana:devnet"
LARGE = 1_000_000  # minor units: a blind declared transfer above this needs two approvers
# Decoded transactions: above these (minor units) two treasury approvers must agree.
LARGE_ETH = 10**18  # 1 ETH
LARGE_BTC = 1_000_000  # 0.01 BTC
LARGE_SOL = 10 * 10**9  # 10 SOL
LARGE_TOKEN = 10_000 * 10**6  # 10,000 units of a 6-decimal token
# Fee caps: a transaction that may burn more than this in fees is denied.
MAX_FEE_WEI = 10**16  # 0.01 ETH
MAX_FEE_SAT = 100_000  # 0.001 BTC
MAX_FEE_LAMPORTS = 1_000_000  # 0.001 SOL

# The text, with @NAME@ standing for the constants above; str.format fills the rest.
_TEXT = """\
# Lantau dev-stack policy (docs/policy.md explains every field).
version = "dev-1"

# Demo USD, the token the desk trades; another token the policy knows but no rule lets
# the desk move; an SPL mint. A token not listed here is refused (UNKNOWN_ASSET).
[assets."erc20:@TOKEN@"]
decimals = 6
max_amount = 1_000_000_000_000_000_000
[assets."erc20:@OTHER_TOKEN@"]
decimals = 18
max_amount = "1000000000000000000000000000"
[assets."spl:@MINT@"]
decimals = 6
max_amount = 1_000_000_000_000_000_000

[address_lists]
sanctioned = ["{sanctioned}", "@SANCTIONED_BTC@", "@SANCTIONED_SOL@"]
cold = ["@COLD_EVM@", "@COLD_BTC@", "@COLD_SOL@"]
# Contracts and programs the desk may call.
evm_contracts = ["@TOKEN@"]
sol_programs = [
  "11111111111111111111111111111111",             # System
  "ComputeBudget111111111111111111111111111111",  # ComputeBudget
  "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",  # SPL Token (not Token-2022)
]

{approvers}
[groups.treasury]
approvers = [{names}]
approves_for = [{requesters}]

# Second factors (docs/console.md): a security key (the console) or a TOTP code (the
# CLI) is enrolled once two treasury approvers other than its owner endorse it.
[second_factor]
required = false
enrol_group = "treasury"
enrol_quorum = 2

# Deny first: any movement to a sanctioned address, parsed or (blind) declared.
[[rules]]
name = "no-sanctioned-destinations"
destination_in = ["sanctioned"]
action = "deny"
reason = "the destination is on the sanctions list"

[[rules]]
name = "evm-fee-cap"
kinds = ["evm_tx"]
fee_above = @MAX_FEE_WEI@
action = "deny"
reason = "the transaction could burn more than 0.01 ETH in fees"

[[rules]]
name = "btc-fee-cap"
kinds = ["btc_psbt"]
fee_above = @MAX_FEE_SAT@
action = "deny"
reason = "the fee is more than 0.001 BTC"

[[rules]]
name = "sol-fee-cap"
kinds = ["sol_message"]
fee_above = @MAX_FEE_LAMPORTS@
action = "deny"
reason = "the fee is more than 0.001 SOL"

# Blind requests (a raw digest: a permission of the key) are judged on what they declare.
[[rules]]
name = "large-transfers"
blind = true
amount_above = {large}
action = "approve"
group = "treasury"
quorum = 2
approval_window_s = 600

[[rules]]
name = "requester-velocity"
blind = true
has_transfer = true
velocity = {{ per = "requester", window_s = 3600, max_amount = 50000000 }}
action = "approve"
group = "treasury"
quorum = 2

# Decoded transactions: thresholds per asset, in its own minor units.
[[rules]]
name = "large-eth"
blind = false
assets = ["ETH"]
amount_above = "@LARGE_ETH@"
action = "approve"
group = "treasury"
quorum = 2
approval_window_s = 600

[[rules]]
name = "large-btc"
blind = false
assets = ["BTC"]
amount_above = @LARGE_BTC@
action = "approve"
group = "treasury"
quorum = 2
approval_window_s = 600

[[rules]]
name = "large-sol"
blind = false
assets = ["SOL"]
amount_above = @LARGE_SOL@
action = "approve"
group = "treasury"
quorum = 2

[[rules]]
name = "large-tokens"
blind = false
assets = ["erc20:@TOKEN@", "spl:@MINT@"]
amount_above = @LARGE_TOKEN@
action = "approve"
group = "treasury"
quorum = 2

[[rules]]
name = "btc-hourly"
blind = false
assets = ["BTC"]
velocity = {{ per = "key", window_s = 3600, max_amount = 10000000 }}
action = "approve"
group = "treasury"
quorum = 2

# A call nobody decoded, to a contract the desk uses: people decide. To any other
# contract: no rule allows it (what nobody can read is denied by default).
[[rules]]
name = "undecoded-calls-to-our-contracts"
kinds = ["evm_tx"]
unknown = true
contracts_in = ["evm_contracts"]
action = "approve"
group = "treasury"
quorum = 2

[[rules]]
name = "evm"
kinds = ["evm_tx", "evm_typed_data"]
chains = @EVM_CHAINS@
assets = ["ETH", "erc20:@TOKEN@"]
contracts_in = ["evm_contracts"]
action = "allow"

[[rules]]
name = "bitcoin"
kinds = ["btc_psbt"]
chains = ["bip122:@BTC_NETWORK@"]
action = "allow"

[[rules]]
name = "solana"
kinds = ["sol_message"]
chains = ["@SOL_CLUSTER@"]
assets = ["SOL", "spl:@MINT@"]
contracts_in = ["sol_programs"]
action = "allow"

[[rules]]
name = "blind-within-limits"
blind = true
action = "allow"
reason = "a key this requester may sign blind with, within limits"
"""


def _fill(match: re.Match[str]) -> str:
    value = globals()[match.group(1)]
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)


TEMPLATE = re.sub(r"@([A-Z_]+)@", _fill, _TEXT)


def write(run_dir: Path, requesters: Sequence[str], *, second_factor: bool = False) -> Path:
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
        ).replace("required = false", f"required = {'true' if second_factor else 'false'}")
    )
    return policy
