"""console: the approvers' web console. People sign in with a security key, read the held
requests their groups approve (decoded here again from the transaction itself), and vote
with a fresh assertion of that key over the exact vote; policy and the hsm-nodes check
the assertion against the key's enrolment. It holds no approver key and no secret.

Run as ``lantau serve console --config FILE``; the pages are on ``[console] host:http_port``
(docs/console.md), metrics and health on ``metrics_port`` like every service.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from libs.config import Config, ConfigError
from libs.policy_store import PolicyStore
from libs.service import Runtime, ServiceEntry
from services.console.app import Console
from services.console.bus import ConsoleBus

log = logging.getLogger("lantau.console")

# In-flight requests (a vote waiting for policy's answer) get this long on SIGTERM.
DRAIN_S = 20.0


def check(cfg: Config) -> None:
    if not cfg.policy.rules_file:
        raise ConfigError(
            "[policy] rules_file: the console reads the approvers, groups and enrolment "
            "quorum from the policy file"
        )
    PolicyStore(cfg.policy.rules_file).load()


async def serve(rt: Runtime) -> None:
    cfg = rt.config.console
    policies = PolicyStore(rt.config.policy.rules_file)
    policies.load()
    console = Console(cfg, await ConsoleBus.open(rt), policies)
    runner = web.AppRunner(console.app(), access_log=None, shutdown_timeout=DRAIN_S)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.http_port)
    await site.start()
    watch = asyncio.create_task(policies.watch(rt.stopping, rt.config.policy.reload_interval_s))
    rt.set_ready("startup", True)
    log.info(
        "approvers' console on %s (listening on %s:%d)", cfg.web_origin, cfg.host, cfg.http_port
    )
    try:
        await rt.stopping.wait()
    finally:
        # Stop taking requests, let the ones in flight finish (a vote waits for policy).
        await runner.cleanup()
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


ENTRY = ServiceEntry(section="console", serve=serve, check=check)
