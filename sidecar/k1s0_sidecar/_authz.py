"""Who may do what: roles, the authenticated principal, and the authenticator interface.

Seed 000: reads and subscriptions need ``sys_auditor`` or above, appends and snapshot creation
``sys_operator`` or above, stream deletion ``sys_admin`` only; health, readiness and metrics are
open. REST routes and gRPC methods each declare one ``Role | None`` (None: open); both protocol
edges call the same ``Authenticator`` and the same ``check`` below.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Protocol

from k1s0_event_store import PermissionDeniedError

log = logging.getLogger("k1s0_sidecar.authz")  # the name people filter on; the module is private


class Role(enum.IntEnum):
    """Ordered so that a higher role includes every lower one (sys_admin ⊃ sys_operator ⊃ sys_auditor)."""

    SYS_AUDITOR = 1
    SYS_OPERATOR = 2
    SYS_ADMIN = 3

    @property
    def claim(self) -> str:
        return self.name.lower()

    @classmethod
    def from_claim(cls, name: str) -> Role | None:
        try:
            return cls[name.upper()]
        except KeyError:
            return None


@dataclass(frozen=True)
class Principal:
    """The caller: ``subject`` is the token's ``sub``; ``role`` the highest role it holds (or None)."""

    subject: str
    role: Role | None
    roles: frozenset[str] = field(default_factory=frozenset)
    anonymous: bool = False


#: The principal of ``auth.mode: none`` (development): everything is allowed.
DEVELOPMENT_PRINCIPAL = Principal(subject="anonymous", role=Role.SYS_ADMIN, anonymous=True)


class Authenticator(Protocol):
    """Turns an ``Authorization`` header value (REST) or ``authorization`` metadata (gRPC) into a
    Principal, or raises ``UnauthenticatedError`` / ``UnavailableError``."""

    async def authenticate(self, authorization: str | None) -> Principal: ...

    async def close(self) -> None: ...


class NoAuthenticator:
    """``auth.mode: none``: no tokens, every caller is an administrator. Never for production."""

    def __init__(self) -> None:
        log.warning(
            "AUTHENTICATION IS DISABLED (auth.mode: none): every caller is treated as sys_admin. "
            "Use auth.mode: jwt outside development."
        )

    async def authenticate(self, authorization: str | None) -> Principal:
        return DEVELOPMENT_PRINCIPAL

    async def close(self) -> None:
        return None


def check(principal: Principal, required: Role | None) -> None:
    """Raise PermissionDeniedError unless ``principal`` holds ``required`` (or a higher role)."""
    if required is None:
        return
    if principal.role is None or principal.role < required:
        held = principal.role.claim if principal.role else "no event-store role"
        raise PermissionDeniedError(f"this operation needs {required.claim} or above; the caller has {held}")
