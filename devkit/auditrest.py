"""Whether the audit trail is at rest over what its sources held, as an auditor reads it.

At rest: the log verifies, records every expected fact, and its newest checkpoint covers
every record except those of checkpoint echoes only. The receipt of a checkpoint's own
signature is recorded after it and waits for the next checkpoint (docs/audit.md), so the
head itself is often one record past the newest checkpoint.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from libs.audit import logread
from libs.audit.trail import Keys
from libs.audit.verify import missing_facts, verify
from proto.audit import AuditRecord
from services.audit.facts import checkpoint_echo


class BrokenLog(Exception):
    """The log does not verify: waiting will not help."""


async def behind(js: JetStreamContext, keys: Keys, expected: list[tuple[str, int]]) -> str:
    """What keeps the trail from rest ("" when at rest); BrokenLog if it fails to verify."""
    items = await logread.read_all(js)
    report = verify(items, keys)
    if not report.ok:
        raise BrokenLog(report.summary())
    t = report.trail
    missing = missing_facts(t, expected)
    if missing:
        return f"facts not recorded yet: {missing[:4]}"
    if t.last_checkpoint is None:
        return "no checkpoint yet"
    for item in items:
        r = item.entry
        if not isinstance(r, AuditRecord) or r.seq <= t.last_cp_size:
            continue
        if not await echoes_only(js, r):
            return f"no checkpoint over record {r.seq} yet (last covers {t.last_cp_size})"
    return ""


async def echoes_only(js: JetStreamContext, r: AuditRecord) -> bool:
    """Whether a record holds nothing but checkpoint echoes (read from their sources)."""
    if r.gaps or r.skipped:
        return False
    for f in r.facts:
        source = await logread.fetch(js, f.stream, f.seq)
        if source.data is None or not checkpoint_echo(source.data):
            return False
    return True
