"""Security keys (WebAuthn / FIDO2), checked with the ``webauthn`` library: registrations
the console accepts, and assertions that sign a sign-in or a vote. Pure, no I/O.

Every assertion must come from the credential's own relying party and origin (both pinned
in the enrolled statement), with the user present and verified (a PIN or a fingerprint
on the key), over exactly the expected challenge. For a vote the challenge is the vote's
digest (proto.approvals.vote_challenge): an assertion made for one vote is worth nothing
for any other request, approver, content or expiry.

Not checked: the signature counter. Keeping it would need a write per vote at every
checker (policy and each hsm-node), and authenticators that keep passkeys in sync report
0 forever; a cloned key is caught by nothing here (docs/console.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from webauthn import verify_authentication_response, verify_registration_response
from webauthn.helpers import bytes_to_base64url, parse_client_data_json
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorAssertionResponse,
    RegistrationCredential,
)

from proto.approvals import WebAuthnAssertion
from proto.credentials import CredentialStatement
from proto.errors import ErrorCode, LantauError, printable

log = logging.getLogger("lantau.webauthn")


def _refuse(message: str) -> LantauError:
    return LantauError(ErrorCode.ASSERTION_INVALID, message)


def challenge_of(assertion: WebAuthnAssertion) -> bytes:
    """The challenge the browser put in the client data (what the key really signed)."""
    try:
        return bytes(parse_client_data_json(assertion.client_data_json).challenge)
    except Exception:  # the library raises a variety of types on hostile bytes
        raise _refuse("the assertion's client data is not WebAuthn client data") from None


def verify_assertion(
    assertion: WebAuthnAssertion, credential: CredentialStatement, challenge: bytes
) -> None:
    """The credential signed ``challenge`` here, its user present and verified; else a
    typed refusal saying which of these failed."""
    if credential.kind != "webauthn" or assertion.credential_id != credential.credential_id:
        raise _refuse("the assertion was made by another credential")
    if challenge_of(assertion) != challenge:
        raise _refuse(
            "the security key signed something else: another vote, request or approver "
            "(an assertion counts only for the exact vote it was made for)"
        )
    raw = assertion.credential_id
    parsed = AuthenticationCredential(
        id=bytes_to_base64url(raw),
        raw_id=raw,
        response=AuthenticatorAssertionResponse(
            client_data_json=assertion.client_data_json,
            authenticator_data=assertion.authenticator_data,
            signature=assertion.signature,
        ),
    )
    try:
        verify_authentication_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=credential.rp_id,
            expected_origin=credential.origin,
            credential_public_key=credential.public_key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except Exception as e:
        # InvalidAuthenticationResponse for what the library checks; CBOR, key and
        # signature-format errors of several types for hostile bytes: all one refusal.
        raise _refuse(f"the security key's assertion does not verify: {_why(e)}") from None


@dataclass(frozen=True)
class Registered:
    credential_id: bytes
    public_key: bytes


def verify_registration(
    response: dict[str, object], challenge: bytes, rp_id: str, origin: str
) -> Registered:
    """A new credential from navigator.credentials.create(), made for ``challenge`` at this
    relying party with the user verified; its id and public key (COSE)."""
    try:
        verified = verify_registration_response(
            credential=response,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_verification=True,
        )
    except Exception as e:
        raise LantauError(
            ErrorCode.REGISTRATION_INVALID, f"the security key's registration failed: {_why(e)}"
        ) from None
    return Registered(bytes(verified.credential_id), bytes(verified.credential_public_key))


def assertion_from_json(response: object) -> WebAuthnAssertion:
    """The assertion a browser posted (PublicKeyCredential JSON, base64url fields)."""
    from webauthn.helpers import parse_authentication_credential_json

    try:
        parsed = parse_authentication_credential_json(response)  # type: ignore[arg-type]
        return WebAuthnAssertion(
            credential_id=bytes(parsed.raw_id),
            authenticator_data=bytes(parsed.response.authenticator_data),
            client_data_json=bytes(parsed.response.client_data_json),
            signature=bytes(parsed.response.signature),
        )
    except Exception as e:
        raise _refuse(f"not a WebAuthn assertion: {_why(e)}") from None


def registration_from_json(response: object) -> RegistrationCredential:
    from webauthn.helpers import parse_registration_credential_json

    try:
        return parse_registration_credential_json(response)  # type: ignore[arg-type]
    except Exception as e:
        raise LantauError(
            ErrorCode.REGISTRATION_INVALID, f"not a WebAuthn registration: {_why(e)}"
        ) from None


def _why(e: Exception) -> str:
    return printable(str(e) or type(e).__name__, 160)
