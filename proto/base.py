"""The one base of every wire message: frozen, keyword-only, tagged, versioned.

A message class names only its tag: ``class SignRequest(Message, tag="sign_request")``.
The ``type`` tag lets unions decode to the right Struct and a consumer refuse what it
does not know; ``v`` lets a newer sender be refused instead of misread.
"""

from __future__ import annotations

import msgspec

from proto import SCHEMA_VERSION
from proto.common import Version


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Subclasses repeat ``frozen=True, kw_only=True``: msgspec applies kw_only per class
    and mypy checks frozen per class."""

    v: Version = SCHEMA_VERSION
