"""What policy judges about a sign request: the facts, parsed where they can be.

For a transaction kind (libs/chains) the facts come from decoding the bytes that will
be signed, never from what the requester says; a declared transfer that disagrees is
refused. For a blind payload (a raw digest or message) the declaration is all there is,
which is why blind signing is a permission of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.chains import Movement, ParsedTx, view_digest
from libs.policy_file import among, canonical
from proto.common import TX_KINDS
from proto.errors import ErrorCode, LantauError
from proto.requests import SignRequest


@dataclass(frozen=True)
class Facts:
    kind: str
    blind: bool
    chain: str | None
    # Value leaving the key's control (change excluded); the declaration when blind.
    movements: tuple[Movement, ...]
    fee: int | None
    contracts: tuple[str, ...]
    calls: tuple[str, ...]
    # Something in the transaction was not decoded (an unknown call or program).
    unknown: bool
    summary: tuple[str, ...]
    view_sha256: str = ""
    # The key: how it is kept ("hsm" or "hsm-wrapped") and, for HD keys, the path.
    protection: str = "hsm"
    path: str | None = None

    def total(self, assets: list[str] | None = None) -> int:
        return sum(m.amount for m in self.movements if not assets or among(m.asset, assets))


@dataclass(frozen=True)
class Judged:
    """A sign request as policy judged it: its facts, the key's curve and the SHA-256
    of each exact byte string an HSM will sign for it."""

    facts: Facts
    digests: list[str]
    curve: str
    public_key: bytes


def _spelled(m: Movement) -> Movement:
    """The movement with asset and destination in canonical spelling: a declaration of
    0xabc... is the checksummed 0xAbC... the transaction decodes to."""
    return Movement(asset=canonical(m.asset), amount=m.amount, destination=canonical(m.destination))


def is_blind(kind: str) -> bool:
    return kind not in TX_KINDS


def facts_of(request: SignRequest, parsed: ParsedTx | None, *, protection: str = "hsm") -> Facts:
    """The facts of a request; ``parsed`` is required for a transaction kind;
    ``protection``: how the request's key is kept."""
    if parsed is None:
        if not is_blind(request.payload_kind):
            raise LantauError(ErrorCode.INTERNAL, "a transaction must be parsed before judged")
        t = request.transfer
        moves = (Movement(asset=t.asset, amount=t.value, destination=t.destination),) if t else ()
        summary = f"blind {request.payload_kind} of {len(request.payload)} bytes"
        if t is not None:
            summary += f"; declared: {t.value} {t.asset} to {t.destination}"
        return Facts(
            kind=request.payload_kind,
            blind=True,
            chain=request.chain,
            movements=moves,
            fee=None,
            contracts=(),
            calls=(),
            unknown=False,
            summary=(summary,),
            protection=protection,
            path=request.path,
        )
    declared = request.transfer
    if declared is not None:
        said = _spelled(
            Movement(asset=declared.asset, amount=declared.value, destination=declared.destination)
        )
        if [_spelled(m) for m in parsed.movements] != [said]:
            raise LantauError(
                ErrorCode.TRANSFER_MISMATCH,
                "the declared transfer does not match the transaction: it moves "
                + (
                    ", ".join(
                        f"{m.amount} minor units of {m.asset} to {m.destination}"
                        for m in parsed.movements
                    )
                    or "nothing"
                ),
            )
    return Facts(
        kind=parsed.kind,
        blind=False,
        chain=parsed.chain,
        movements=tuple(parsed.movements),
        fee=parsed.fee,
        contracts=tuple(parsed.contracts),
        calls=tuple(parsed.calls),
        unknown=parsed.unknown,
        summary=tuple(parsed.summary),
        view_sha256=view_digest(parsed),
        protection=protection,
        path=request.path,
    )
