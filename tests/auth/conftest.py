from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from k1s0_event_store.sidecar_config import AuthSection
from k1s0_sidecar._auth import JwtAuthenticator
from tests.auth.support import AUDIENCE, CLIENT_ID, ISSUER, JwksServer, SigningKey


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture(scope="session")
def rsa_key_2() -> SigningKey:
    return SigningKey.rsa("rsa-2")


@pytest.fixture
async def jwks(rsa_key: SigningKey, ec_key: SigningKey) -> AsyncIterator[JwksServer]:
    async with JwksServer.serving(rsa_key, ec_key) as server:
        yield server


@dataclass
class Clock:
    """The authenticator's monotonic clock, moved by the test instead of waiting."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def section(jwks: JwksServer, **changes: Any) -> AuthSection:
    values: dict[str, Any] = {
        "mode": "jwt",
        "jwks_url": jwks.url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "client_id": CLIENT_ID,
        "leeway_seconds": 30.0,
        "jwks_refetch_seconds": 10.0,
        "jwks_max_age_seconds": 300.0,
        "jwks_timeout_seconds": 2.0,
    }
    values.update(changes)
    return AuthSection(**values)


@pytest.fixture
async def authn(jwks: JwksServer, clock: Clock) -> AsyncIterator[JwtAuthenticator]:
    authenticator = JwtAuthenticator(section(jwks), clock=clock)
    try:
        yield authenticator
    finally:
        await authenticator.close()
