"""The second factor of an HSM ceremony's officer, for any ceremony command to call:

    from services.cli.second_factor import require
    require(config_path, officer, "hsm domain-init hsm-1", code=args.totp_code)

When the policy file says ``[second_factor] ceremonies = true`` the ceremony names its
officer (an approver of the policy file with an enrolled TOTP authenticator) and gives a
code from it; policy, which alone can open the sealed secret, checks it (and spends it:
a code is good once) and answers on the record. Without that setting, a ceremony run
with an officer still checks; one run without an officer goes on as before (the first
domain-init comes before anybody can be enrolled).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import uuid

from libs import config as config_mod
from libs.bus.permissions import OPERATOR
from libs.clock import now_ms
from libs.policy_store import PolicyStore
from proto.credentials import CredentialOutcome, SecondFactorCheck
from proto.errors import ErrorCode, LantauError
from services.cli.credentials_cmd import OUTCOME_WAIT_S, send_and_wait
from services.cli.identity import connect_cli
from services.cli.usage import UsageError


def required(cfg: config_mod.Config) -> bool:
    """The policy file asks every ceremony for its officer's second factor."""
    if not cfg.policy.rules_file:
        return False
    store = PolicyStore(cfg.policy.rules_file)
    store.load()
    return store.current.file.second_factor.ceremonies


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--officer`` and ``--totp-code`` for a ceremony command."""
    p.add_argument("--officer", help="who runs it: their second factor is checked by policy")
    p.add_argument("--totp-code", help="the officer's TOTP code (asked for when left out)")


def ask_code(person: str) -> str:
    """A code typed on the terminal (never echoed); a script passes --totp-code."""
    if not sys.stdin.isatty():
        raise UsageError(f"a second factor is needed from {person}: pass --totp-code CODE")
    return getpass.getpass(f"TOTP code of {person}: ").strip()


def require(
    config_path: str, officer: str | None, purpose: str, *, code: str | None = None
) -> None:
    """Return when the officer's second factor is good (or none is needed); else raise a
    typed refusal, so the ceremony does not run."""
    cfg = config_mod.load(config_path)
    if officer is None:
        if required(cfg):
            raise UsageError(
                "the policy requires a second factor for ceremonies: name the officer "
                "(--officer NAME) and give a code from their authenticator app"
            )
        return
    given = (code if code is not None else ask_code(officer)).strip()
    if not (given.isascii() and given.isdigit() and 6 <= len(given) <= 8):
        raise UsageError("a TOTP code is 6 to 8 digits")
    answer = asyncio.run(check(cfg, officer, purpose, given, config_path))
    if answer is None:
        raise LantauError(
            ErrorCode.BUS_UNAVAILABLE,
            f"policy did not answer the second-factor check within {OUTCOME_WAIT_S:.0f} s",
        )
    if not answer.accepted:
        raise LantauError(ErrorCode(answer.code), f"{purpose} refused: {answer.message}")


async def check(
    cfg: config_mod.Config, person: str, purpose: str, code: str, config_path: str | None = None
) -> CredentialOutcome | None:
    """Ask policy (as the operator) whether ``code`` is ``person``'s second factor now."""
    request = SecondFactorCheck(
        check_id=uuid.uuid4().hex,
        person=person,
        purpose=purpose[:200],
        totp_code=code,
        created_at_ms=now_ms(),
    )
    nc = await connect_cli(cfg, OPERATOR, config_path=config_path, name="lantau-second-factor")

    try:
        return await send_and_wait(
            nc, OPERATOR, person, request, lambda e: e.proposal_id == request.check_id
        )
    finally:
        await nc.close()
