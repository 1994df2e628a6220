"""Debian's chromium, driven by Playwright, with a virtual security key per person.

The browser is the system package (``make system-deps`` installs it); Playwright never
downloads one. Each person gets a browser context of their own (their own cookies) and a
page with a CTAP2 virtual authenticator that verifies its user (the DevTools protocol's
WebAuthn domain), so a test touches "the key" by clicking the page's button.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic goes nowhere on a closed network: keep it off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS_ENV = "LANTAU_TEST_ARTIFACTS"


@dataclass
class Person:
    name: str
    page: Any
    authenticator: str
    cdp: Any

    async def credentials(self) -> list[dict[str, Any]]:
        got = await self.cdp.send(
            "WebAuthn.getCredentials", {"authenticatorId": self.authenticator}
        )
        return list(got["credentials"])


async def person(browser: Any, name: str) -> Person:
    """A browser context and page for ``name``, holding a virtual security key."""
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable", {"enableUI": False})
    added = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": False,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return Person(name, page, added["authenticatorId"], cdp)


class Screenshots:
    """Screenshots of the pages a test visits: under the test's tmp dir, and in CI also
    under $LANTAU_TEST_ARTIFACTS/console (which .ci/run keeps)."""

    def __init__(self, tmp: Path) -> None:
        self.dirs = [tmp / "screenshots"]
        if os.environ.get(ARTIFACTS_ENV):
            self.dirs.append(Path(os.environ[ARTIFACTS_ENV]) / "console")
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    async def take(self, page: Any, name: str) -> Path:
        first = self.dirs[0] / f"{name}.png"
        await page.screenshot(path=str(first), full_page=True)
        for d in self.dirs[1:]:
            shutil.copyfile(first, d / first.name)
        self.taken.append(first)
        return first
