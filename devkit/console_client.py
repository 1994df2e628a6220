"""The console's own HTTP path, driven without a browser: the headless demo signs in and
votes through exactly the endpoints the page's script uses, with a software security key
(devkit/authenticator.py) where a person would touch theirs."""

from __future__ import annotations

from typing import Any

import aiohttp

from devkit.authenticator import SoftAuthenticator


class ConsoleClient:
    def __init__(self, base_url: str, authenticator: SoftAuthenticator) -> None:
        self.base = base_url.rstrip("/")
        self.authenticator = authenticator
        # unsafe: keep cookies for an IP or "localhost" host (the dev console's).
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def __aenter__(self) -> ConsoleClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.close()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.base + path, json=body) as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def _ceremony(self, name: str, body: dict[str, Any], create: bool) -> dict[str, Any]:
        started = await self._post(f"/api/{name}/begin", body)
        if not started.get("ok"):
            return started
        options = started["options"]
        credential = (
            self.authenticator.register(options)
            if create
            else self.authenticator.assertion(options)
        )
        return await self._post(
            f"/api/{name}/finish", {"ceremony": started["ceremony"], "credential": credential}
        )

    async def enrol(self, person: str, label: str = "") -> dict[str, Any]:
        return await self._ceremony("enrol", {"person": person, "label": label}, True)

    async def sign_in(self, person: str) -> dict[str, Any]:
        return await self._ceremony("signin", {"person": person}, False)

    async def vote(self, requester: str, request_id: str, vote: str = "approve") -> dict[str, Any]:
        body = {"requester": requester, "request_id": request_id, "vote": vote}
        return await self._ceremony("vote", body, False)

    async def page(self, path: str) -> str:
        async with self.http.get(self.base + path) as response:
            return await response.text()
