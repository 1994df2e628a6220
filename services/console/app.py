"""The console's web pages and its small JSON API for the WebAuthn prompts (aiohttp).

Pages are rendered on the server (Jinja2, autoescaped); one script (static/console.js)
does what only a browser can: ask the security key. Every decision is made here or by
policy, never by the script. Refusals come back as a sentence the page shows as it is.

    GET  /                      held requests the signed-in person's groups approve
    GET  /requests/<r>/<id>     one held request, decoded, with approve / reject
    GET  /signin, /enrol        sign in with a security key; enrol a new one
    POST /api/signin/begin|finish, /api/vote/begin|finish, /api/enrol/begin|finish
    POST /signout
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from aiohttp import web
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
)
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from libs import credentials as creds
from libs.approvals_view import Review, review, scopes
from libs.clock import now_ms
from libs.config import ConsoleConfig
from libs.policy_store import PolicyStore
from libs.webauthn_check import (
    assertion_from_json,
    verify_assertion,
    verify_registration,
)
from proto.approvals import PendingApproval, vote_challenge
from proto.credentials import (
    CredentialProposal,
    CredentialRecord,
    CredentialStatement,
    credential_key,
)
from proto.errors import ErrorCode, LantauError
from proto.subjects import request_key
from services.console import views
from services.console.bus import ConsoleBus
from services.console.sessions import Session, Sessions

log = logging.getLogger("lantau.console")

COOKIE = "lantau_console"
HERE = Path(__file__).parent
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _person(value: object) -> str:
    """A person's name from a form: an approver name, or a typed refusal."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= _NAME_CHARS:
        raise LantauError(
            ErrorCode.INVALID_FIELD, "enter your approver name (letters, digits, - _)"
        )
    return value


def _text(body: dict[str, Any], name: str, limit: int = 64) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise LantauError(
            ErrorCode.INVALID_FIELD, f"{name} must be text of at most {limit} characters"
        )
    return value


class Console:
    def __init__(self, cfg: ConsoleConfig, bus: ConsoleBus, policies: PolicyStore) -> None:
        self.cfg = cfg
        self.bus = bus
        self.policies = policies
        self.origin = cfg.web_origin
        self.sessions = Sessions(
            session_ttl_ms=cfg.session_ttl_s * 1000, ceremony_ttl_ms=cfg.vote_window_s * 1000
        )
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    # -- plumbing -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        app.add_routes(
            [
                web.get("/", self.index),
                web.get("/signin", self.signin_page),
                web.get("/enrol", self.enrol_page),
                web.get("/requests/{requester}/{request_id}", self.detail),
                web.post("/signout", self.signout),
                web.post("/api/signin/begin", self.signin_begin),
                web.post("/api/signin/finish", self.signin_finish),
                web.post("/api/vote/begin", self.vote_begin),
                web.post("/api/vote/finish", self.vote_finish),
                web.post("/api/enrol/begin", self.enrol_begin),
                web.post("/api/enrol/finish", self.enrol_finish),
                web.static("/static", HERE / "static"),
            ]
        )
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response = await handler(request)
        except LantauError as e:
            if request.path.startswith("/api/"):
                return web.json_response({"ok": False, "code": str(e.code), "message": e.message})
            return self._page(
                "message.html", request, self._session(request), title="Refused", text=e.message
            )
        # Nothing of ours may be framed or read by another origin.
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    def _page(
        self, name: str, request: web.Request, session: Session | None, **values: Any
    ) -> web.Response:
        html = self.templates.get_template(name).render(session=session, **values)
        return web.Response(text=html, content_type="text/html")

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), now_ms())

    def _signed_in(self, request: web.Request) -> Session:
        session = self._session(request)
        if session is None:
            raise LantauError(ErrorCode.NOT_SIGNED_IN, "sign in with your security key first")
        return session

    async def _json(self, request: web.Request) -> dict[str, Any]:
        # A JSON body is never a simple cross-site form post: with SameSite=Strict cookies
        # this is the console's defence against cross-site requests.
        if request.content_type != "application/json":
            raise LantauError(ErrorCode.INVALID_FIELD, "the request must be JSON")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise LantauError(
                ErrorCode.MALFORMED_MESSAGE, "the request is not valid JSON"
            ) from None
        if not isinstance(body, dict):
            raise LantauError(ErrorCode.MALFORMED_MESSAGE, "the request must be a JSON object")
        return body

    def _webauthn_ones(
        self, records: list[CredentialRecord], person: str
    ) -> tuple[CredentialStatement, ...]:
        return creds.active(records, self.policies.current.file, "webauthn").get(person, ())

    def _why_none(self, records: list[CredentialRecord], person: str) -> tuple[ErrorCode, str]:
        """Why ``person`` has no security key to sign in with, in words."""
        theirs = [
            creds.standing(r, self.policies.current.file)
            for r in records
            if r.statement.person == person and r.statement.kind == "webauthn"
        ]
        revoked = [s for s in theirs if s.state == "revoked"]
        if revoked:
            return (
                ErrorCode.CREDENTIAL_REVOKED,
                f"{person}'s security key was {revoked[-1].why}; enrol a new one",
            )
        proposed = [s for s in theirs if s.state == "proposed"]
        if proposed:
            return (
                ErrorCode.UNKNOWN_CREDENTIAL,
                f"{person}'s security key is not enrolled yet: {proposed[-1].why}",
            )
        return (
            ErrorCode.UNKNOWN_CREDENTIAL,
            f"{person} has no enrolled security key (enrol one, then ask for endorsements)",
        )

    def _reviewed(self, p: PendingApproval) -> Review:
        return review(p, p.public_key or None)

    def _scopes(self) -> dict[str, list[str]]:
        return scopes(self.policies.current.file)

    # -- pages --------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            raise web.HTTPFound("/signin")
        now = now_ms()
        held = views.visible(await self.bus.held(), session.person, self._scopes())
        shown = [views.held_view(p, self._reviewed(p), now) for p in held]
        pending = [h for h in shown if h.status == "pending"]
        decided = [h for h in shown if h.status != "pending"]
        return self._page("list.html", request, session, pending=pending, decided=decided[-20:])

    async def detail(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            raise web.HTTPFound("/signin")
        requester = request.match_info["requester"]
        request_id = request.match_info["request_id"]
        p = await self._held_in_scope(request, session, requester, request_id, "view")
        held = views.held_view(p, self._reviewed(p), now_ms())
        return self._page("detail.html", request, session, held=held)

    async def _held_in_scope(
        self, request: web.Request, session: Session, requester: str, request_id: str, action: str
    ) -> PendingApproval:
        """The held request, when the person may see and vote on it; else the refusal,
        recorded (need-to-know: asking about another group's request is on the record)."""
        p = views.find(await self.bus.held(), requester, request_id)
        if p is not None and views.in_scope(p, session.person, self._scopes()):
            return p
        why = views.out_of_scope(p, requester, request_id)
        await self.bus.record(
            session.person,
            action,
            accepted=False,
            code=str(ErrorCode.WRONG_GROUP),
            message=why,
            request=request_key(requester, request_id),
            remote=request.remote or "",
        )
        raise LantauError(ErrorCode.WRONG_GROUP, why)

    async def signin_page(self, request: web.Request) -> web.StreamResponse:
        return self._page("signin.html", request, self._session(request))

    async def enrol_page(self, request: web.Request) -> web.StreamResponse:
        return self._page("enrol.html", request, self._session(request))

    async def signout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.close(request.cookies.get(COOKIE))
        response = web.HTTPFound("/signin")
        response.del_cookie(COOKIE)
        raise response

    # -- sign-in --------------------------------------------------------------------------

    async def signin_begin(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        person = _person(body.get("person"))
        records = await self.bus.records()
        mine = self._webauthn_ones(records, person)
        if not mine:
            code, why = self._why_none(records, person)
            await self.bus.record(
                person,
                "signin",
                accepted=False,
                code=str(code),
                message=why,
                remote=request.remote or "",
            )
            raise LantauError(code, why)
        challenge = secrets.token_bytes(32)
        ceremony = self.sessions.begin("signin", person, challenge, now_ms())
        return self._options(ceremony.id, self._request_options(challenge, mine))

    async def signin_finish(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        ceremony = self.sessions.take(_text(body, "ceremony"), "signin", now_ms())
        person = ceremony.person
        try:
            assertion = assertion_from_json(body.get("credential"))
            credential = creds.credential_for(
                await self.bus.records(),
                person,
                assertion.credential_id,
                self.policies.current.file,
            )
            verify_assertion(assertion, credential, ceremony.challenge)
        except LantauError as e:
            if e.code == ErrorCode.CREDENTIAL_REVOKED:
                self.sessions.close_person(person)
            await self.bus.record(
                person,
                "signin",
                accepted=False,
                code=str(e.code),
                message=e.message,
                remote=request.remote or "",
            )
            raise
        key = credential_key(credential.credential_id)
        recorded = await self.bus.record(
            person, "signin", accepted=True, message=f"signed in with key {key[:12]}"
        )
        if not recorded:
            raise LantauError(
                ErrorCode.BUS_UNAVAILABLE, "the sign-in cannot be recorded now: try again soon"
            )
        session = self.sessions.open(person, key, now_ms())
        response = web.json_response({"ok": True, "next": "/"})
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=self.cfg.session_ttl_s,
            httponly=True,
            samesite="Strict",
            secure=self.origin.startswith("https://"),
        )
        return response

    # -- votes ---------------------------------------------------------------------------

    async def vote_begin(self, request: web.Request) -> web.StreamResponse:
        session = self._signed_in(request)
        body = await self._json(request)
        requester, request_id = _text(body, "requester"), _text(body, "request_id")
        verb = body.get("vote")
        if verb not in ("approve", "reject"):
            raise LantauError(ErrorCode.INVALID_FIELD, "vote must be approve or reject")
        p = await self._held_in_scope(request, session, requester, request_id, "vote")
        records = await self.bus.records()
        mine = self._webauthn_ones(records, session.person)
        if not mine:
            # Revoked (or no longer counting) since sign-in: policy would refuse the vote;
            # say why now, sign the person out, and keep it on the record.
            code, why = self._why_none(records, session.person)
            self.sessions.close_person(session.person)
            await self.bus.record(
                session.person,
                "vote",
                accepted=False,
                code=str(code),
                message=why,
                request=request_key(requester, request_id),
                remote=request.remote or "",
            )
            raise LantauError(code, why)
        now = now_ms()
        vote = views.unsigned_vote(
            p, session.person, verb, self._reviewed(p), now, self.cfg.vote_window_s * 1000
        )
        challenge = vote_challenge(vote)
        ceremony = self.sessions.begin(
            "vote", session.person, challenge, now, session=session.token, vote=vote
        )
        return self._options(ceremony.id, self._request_options(challenge, mine))

    async def vote_finish(self, request: web.Request) -> web.StreamResponse:
        """Attach the assertion to the vote it was asked for and let policy judge it: the
        console does not pre-judge, so every refusal is policy's, and on the record."""
        session = self._signed_in(request)
        body = await self._json(request)
        ceremony = self.sessions.take(_text(body, "ceremony"), "vote", now_ms(), session.token)
        assert ceremony.vote is not None
        assertion = assertion_from_json(body.get("credential"))
        vote = msgspec.structs.replace(ceremony.vote, assertion=assertion)
        outcome = await self.bus.vote(vote)
        if outcome is None:
            raise LantauError(
                ErrorCode.RESULT_TIMEOUT,
                f"your vote was sent but policy did not answer within 15 s (vote {vote.vote_id})",
            )
        if not outcome.accepted:
            if outcome.code == ErrorCode.CREDENTIAL_REVOKED:
                self.sessions.close_person(session.person)
            return web.json_response(
                {"ok": False, "code": outcome.code, "message": f"refused: {outcome.message}"}
            )
        return web.json_response(
            {"ok": True, "message": outcome.message, "status": outcome.status, "next": "/"}
        )

    # -- enrolment -----------------------------------------------------------------------

    async def enrol_begin(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        person = _person(body.get("person"))
        label = _text(body, "label")
        if person not in self.policies.current.file.approvers:
            raise LantauError(ErrorCode.UNKNOWN_APPROVER, f"{person} is not an approver")
        challenge = secrets.token_bytes(32)
        ceremony = self.sessions.begin("enrol", person, challenge, now_ms(), label=label)
        existing = [
            PublicKeyCredentialDescriptor(id=s.credential_id)
            for s in self._webauthn_ones(await self.bus.records(), person)
        ]
        options = generate_registration_options(
            rp_id=self.cfg.rp_id,
            rp_name="Lantau approvals",
            user_id=person.encode(),
            user_name=person,
            challenge=challenge,
            timeout=self.cfg.vote_window_s * 1000,
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.DISCOURAGED,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            exclude_credentials=existing,
        )
        return self._options(ceremony.id, options_to_json(options))

    async def enrol_finish(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        now = now_ms()
        ceremony = self.sessions.take(_text(body, "ceremony"), "enrol", now)
        response = body.get("credential")
        if not isinstance(response, dict):
            raise LantauError(ErrorCode.REGISTRATION_INVALID, "no registration came back")
        made = verify_registration(response, ceremony.challenge, self.cfg.rp_id, self.origin)
        window = self.policies.current.file.second_factor.proposal_window_s * 1000
        statement = CredentialStatement(
            person=ceremony.person,
            kind="webauthn",
            credential_id=made.credential_id,
            public_key=made.public_key,
            rp_id=self.cfg.rp_id,
            origin=self.origin,
            label=ceremony.label,
            proposed_at_ms=now,
            expires_at_ms=now + window,
        )
        proposal = CredentialProposal(proposal_id=secrets.token_hex(16), statement=statement)
        outcome = await self.bus.propose(proposal)
        if outcome is None:
            raise LantauError(ErrorCode.RESULT_TIMEOUT, "policy did not answer the proposal")
        if not outcome.accepted:
            return web.json_response(
                {"ok": False, "code": outcome.code, "message": f"refused: {outcome.message}"}
            )
        sf = self.policies.current.file.second_factor
        key = credential_key(made.credential_id)
        return web.json_response(
            {
                "ok": True,
                "message": (
                    f"security key {key} proposed for {ceremony.person}. It counts once "
                    f"{sf.enrol_quorum} members of group {sf.enrol_group!r} other than you "
                    f"endorse it: lantau credentials endorse {ceremony.person}/{key} "
                    "--approver NAME --key-file NAME.key"
                ),
                "credential": key,
            }
        )

    # -- helpers -----------------------------------------------------------------------------

    def _request_options(self, challenge: bytes, mine: tuple[CredentialStatement, ...]) -> str:
        options = generate_authentication_options(
            rp_id=self.cfg.rp_id,
            challenge=challenge,
            timeout=self.cfg.vote_window_s * 1000,
            allow_credentials=[PublicKeyCredentialDescriptor(id=s.credential_id) for s in mine],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return options_to_json(options)

    @staticmethod
    def _options(ceremony: str, options_json: str) -> web.Response:
        return web.json_response(
            {"ok": True, "ceremony": ceremony, "options": json.loads(options_json)}
        )
