"""Child processes that never outlive their parent and stop cleanly.

Each child runs in its own session (so a terminal's Ctrl-C reaches only the parent,
which then stops children in order) and asks Linux to SIGTERM it if the parent dies
(PR_SET_PDEATHSIG), so even a SIGKILLed dev stack leaves nothing orphaned.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} not started"
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (chaos tests)."""
        if self.alive:
            os.killpg(self.pid, signal.SIGKILL)
            assert self._proc is not None
            self._proc.wait()

    def stop(self) -> None:
        """SIGSTOP: hung, not dead."""
        self.signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole group; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.cont()  # a stopped process cannot handle SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self._proc.wait()
        return self._proc.returncode

    async def terminate_async(self, timeout_s: float = 15.0) -> int | None:
        return await asyncio.to_thread(self.terminate, timeout_s)

    def restart(self) -> ManagedProcess:
        self.terminate()
        return self.start()

    def wait(self, timeout_s: float | None = None) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessGroup:
    """Children started in order and stopped in reverse order."""

    def __init__(self) -> None:
        self.processes: dict[str, ManagedProcess] = {}

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        self.processes[proc.name] = proc
        return proc

    def __getitem__(self, name: str) -> ManagedProcess:
        return self.processes[name]

    def stop_all(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        codes = {}
        for name in reversed(list(self.processes)):
            codes[name] = self.processes[name].terminate(timeout_s)
        return codes

    def dead(self) -> list[ManagedProcess]:
        return [p for p in self.processes.values() if p.returncode is not None]


def wait_until(predicate: object, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval_s)
    return False
