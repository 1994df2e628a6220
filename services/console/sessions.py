"""Signed-in sessions and WebAuthn ceremonies in flight, in memory (time passed in).

A ceremony (sign-in, vote, enrolment) is the challenge the console handed a browser; it
is good once and for a short time. A vote ceremony keeps the exact vote whose digest is
the challenge, so the assertion that comes back is attached to that vote and no other.
Sessions are bearer tokens in an HttpOnly, SameSite=Strict cookie; a restart of the
console signs everybody out (there is nothing to restore: every vote needs a fresh
assertion anyway).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

from proto.approvals import ApprovalVote
from proto.errors import ErrorCode, LantauError

CeremonyKind = Literal["signin", "vote", "enrol"]
# A bound on what strangers can make the console remember before they sign in.
MAX_CEREMONIES = 10_000


@dataclass(frozen=True)
class Session:
    token: str
    person: str
    credential: str
    expires_ms: int


@dataclass(frozen=True)
class Ceremony:
    id: str
    kind: CeremonyKind
    person: str
    challenge: bytes
    expires_ms: int
    # The session that began it (votes): another session cannot finish it.
    session: str = ""
    vote: ApprovalVote | None = None
    label: str = ""


@dataclass
class Sessions:
    session_ttl_ms: int
    ceremony_ttl_ms: int
    _sessions: dict[str, Session] = field(default_factory=dict)
    _ceremonies: dict[str, Ceremony] = field(default_factory=dict)

    def open(self, person: str, credential: str, now_ms: int) -> Session:
        session = Session(
            token=secrets.token_urlsafe(32),
            person=person,
            credential=credential,
            expires_ms=now_ms + self.session_ttl_ms,
        )
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None, now_ms: int) -> Session | None:
        session = self._sessions.get(token or "")
        if session is None:
            return None
        if now_ms >= session.expires_ms:
            del self._sessions[session.token]
            return None
        return session

    def close(self, token: str | None) -> None:
        self._sessions.pop(token or "", None)

    def close_person(self, person: str) -> None:
        """Sign a person out everywhere (their key was refused as revoked)."""
        for token in [t for t, s in self._sessions.items() if s.person == person]:
            del self._sessions[token]

    def begin(
        self,
        kind: CeremonyKind,
        person: str,
        challenge: bytes,
        now_ms: int,
        *,
        session: str = "",
        vote: ApprovalVote | None = None,
        label: str = "",
    ) -> Ceremony:
        self._expire(now_ms)
        if len(self._ceremonies) >= MAX_CEREMONIES:
            raise LantauError(ErrorCode.INTERNAL, "too many sign-ins in progress; try again soon")
        ceremony = Ceremony(
            id=secrets.token_urlsafe(16),
            kind=kind,
            person=person,
            challenge=challenge,
            expires_ms=now_ms + self.ceremony_ttl_ms,
            session=session,
            vote=vote,
            label=label,
        )
        self._ceremonies[ceremony.id] = ceremony
        return ceremony

    def take(
        self, ceremony_id: str, kind: CeremonyKind, now_ms: int, session: str = ""
    ) -> Ceremony:
        """The ceremony, used up: a second finish of the same one is refused."""
        ceremony = self._ceremonies.pop(ceremony_id, None)
        if ceremony is None or ceremony.kind != kind or ceremony.session != session:
            raise LantauError(
                ErrorCode.ASSERTION_INVALID,
                "this security-key prompt is unknown or was already used: start again",
            )
        if now_ms >= ceremony.expires_ms:
            raise LantauError(
                ErrorCode.ASSERTION_INVALID,
                f"the security-key prompt expired ({self.ceremony_ttl_ms // 1000} s): start again",
            )
        return ceremony

    def _expire(self, now_ms: int) -> None:
        for cid in [c.id for c in self._ceremonies.values() if now_ms >= c.expires_ms]:
            del self._ceremonies[cid]
        for token in [s.token for s in self._sessions.values() if now_ms >= s.expires_ms]:
            del self._sessions[token]
