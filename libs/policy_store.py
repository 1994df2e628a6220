"""The policy in force, reloaded from its file while the service runs.

A file that does not parse or check is refused, with the line at fault in the log,
and the previous policy stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from libs import metrics
from libs.policy_file import Policy, PolicyFile, PolicyFileError, Rule, parse

log = logging.getLogger("lantau.policy")

# Without a policy file, need-to-know alone decides (every key a requester may use).
BUILTIN = Policy(
    PolicyFile(version="builtin", rules=[Rule(name="need-to-know-only", action="allow")]),
    "builtin",
)


class PolicyStore:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.current = BUILTIN
        self._seen: tuple[float, int] | None = None

    def load(self) -> None:
        """First load: a bad file at startup is fatal (there is no old policy to keep)."""
        if self.path is None:
            log.warning("no policy rules_file configured: need-to-know alone decides")
            return
        if not self.reload():
            raise PolicyFileError(f"cannot start with policy file {self.path}")

    def reload(self) -> bool:
        """Load the file if it changed; False if it was refused."""
        if self.path is None:
            return True
        try:
            stat = self.path.stat()
            seen = (stat.st_mtime, stat.st_size)
            if seen == self._seen:
                return True
            self._seen = seen
            policy = parse(self.path.read_text(encoding="utf-8"))
        except OSError as e:
            return self._refuse(f"cannot read it: {e.strerror}")
        except UnicodeDecodeError as e:
            return self._refuse(f"not UTF-8 text: {e.reason} at byte {e.start}")
        except PolicyFileError as e:
            return self._refuse(str(e))
        old, self.current = self.current.version, policy
        metrics.POLICY_RELOADS.labels("loaded").inc()
        log.info("policy %s in force (was %s), %d rules", policy.version, old, len(policy.rules))
        return True

    def _refuse(self, why: str) -> bool:
        metrics.POLICY_RELOADS.labels("refused").inc()
        log.error(
            "policy file %s refused: %s; policy %s stays in force",
            self.path,
            why,
            self.current.version,
        )
        return False

    async def watch(self, stopping: asyncio.Event, interval_s: float) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval_s)
            self.reload()
