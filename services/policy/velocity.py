"""Rolling velocity windows: pure state kept in JetStream KV, changed only by CAS.

A window lists the charges (request id, time, amount) inside it, so a redelivered
request is recognised and never counted twice, and a request that is not signed in
the end (rejected, expired approval) can be released exactly.
"""

from __future__ import annotations

import msgspec


class Entry(msgspec.Struct, frozen=True, array_like=True):
    request_id: str
    at_ms: int
    amount: int


class Window(msgspec.Struct, frozen=True):
    entries: list[Entry] = []

    def live(self, now_ms: int, window_s: int) -> list[Entry]:
        start = now_ms - window_s * 1000
        return [e for e in self.entries if e.at_ms > start]

    def totals(self, now_ms: int, window_s: int) -> tuple[int, int]:
        """(count, amount) inside the window ending now."""
        live = self.live(now_ms, window_s)
        return len(live), sum(e.amount for e in live)

    def holds(self, request_id: str) -> bool:
        return any(e.request_id == request_id for e in self.entries)

    def charged(self, request_id: str, now_ms: int, amount: int, window_s: int) -> Window:
        """This window with the request added (and entries that fell out dropped)."""
        live = [e for e in self.live(now_ms, window_s) if e.request_id != request_id]
        return Window([*live, Entry(request_id, now_ms, amount)])

    def released(self, request_id: str) -> Window:
        return Window([e for e in self.entries if e.request_id != request_id])


# JSON, not msgpack: amounts in wei or token units do not fit 64 bits.
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Window)


def encode(window: Window) -> bytes:
    return _encoder.encode(window)


def decode(data: bytes | None) -> Window:
    return _decoder.decode(data) if data else Window()
