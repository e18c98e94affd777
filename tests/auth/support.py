"""Real keys, real tokens and a real JWKS HTTP server for the authentication tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.postgres import free_port

ISSUER = "https://auth.k1s0.test/realms/k1s0"
AUDIENCE = "k1s0-eventstore"
CLIENT_ID = "eventstore-client"


def jwt_env(jwks_url: str, **extra: str) -> dict[str, str]:
    """A served sidecar's environment for ``auth.mode: jwt`` against the test key server."""
    return {
        "EVENTSTORE_AUTH_MODE": "jwt", "EVENTSTORE_AUTH_JWKS_URL": jwks_url, "EVENTSTORE_AUTH_ISSUER": ISSUER,
        "EVENTSTORE_AUTH_AUDIENCE": AUDIENCE, "EVENTSTORE_AUTH_CLIENT_ID": CLIENT_ID, **extra,
    }


@dataclass(frozen=True)
class SigningKey:
    """A private key the tests sign with; ``jwk()`` is what the key server publishes."""

    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str | None = None, bits: int = 2048) -> SigningKey:
        return cls(kid or f"rsa-{uuid.uuid4().hex[:8]}", "RS256", rsa.generate_private_key(65537, bits))

    @classmethod
    def ec(cls, kid: str | None = None) -> SigningKey:
        return cls(kid or f"ec-{uuid.uuid4().hex[:8]}", "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self, **extra: Any) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        data: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        data.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        data.update(extra)
        return {k: v for k, v in data.items() if v is not None}

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def sign(self, claims: dict[str, Any], *, kid: str | None = "self", **headers: Any) -> str:
        header: dict[str, Any] = dict(headers)
        if kid == "self":
            header["kid"] = self.kid
        elif kid is not None:
            header["kid"] = kid
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=header)


def claims(
    sub: str | None = "user-001",
    roles: list[str] | None = None,
    *,
    client_roles: dict[str, list[str]] | None = None,
    iss: str | None = ISSUER,
    aud: str | list[str] | None = AUDIENCE,
    exp_in: float | None = 300,
    nbf_in: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Seed 004's TokenClaims: sub, iss, aud, exp, iat, realm_access, resource_access."""
    now = int(time.time())
    body: dict[str, Any] = {"iat": now, "jti": uuid.uuid4().hex, "preferred_username": sub}
    if sub is not None:
        body["sub"] = sub
    if iss is not None:
        body["iss"] = iss
    if aud is not None:
        body["aud"] = aud
    if exp_in is not None:
        body["exp"] = now + int(exp_in)
    if nbf_in is not None:
        body["nbf"] = now + int(nbf_in)
    if roles is not None:
        body["realm_access"] = {"roles": roles}
    if client_roles is not None:
        body["resource_access"] = {client: {"roles": r} for client, r in client_roles.items()}
    body.update(extra)
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes | None = None, *,
          hmac_secret: bytes | None = None) -> str:
    """An attacker's token: any header, any payload, an HMAC over them with any secret (the
    public key, say) or an arbitrary signature."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if hmac_secret is not None:
        signature = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature or b'')}"


@dataclass
class JwksServer:
    """The key server: ``GET /.well-known/jwks.json`` on 127.0.0.1, stoppable and restartable on
    the same port. ``mode``: ok, error (HTTP 500), garbage (not JSON), hang (never answers)."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"
    port: int = field(default_factory=free_port)
    requests: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def publish(self, *signing_keys: SigningKey) -> None:
        self.keys = [k.jwk() for k in signing_keys]

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "error":
            return web.Response(status=500, text="key server error")
        if self.mode == "garbage":
            return web.Response(text="<html>not a key set</html>", content_type="text/html")
        if self.mode == "hang":
            await self._release.wait()
            return web.Response(status=503)
        return web.json_response({"keys": self.keys})

    async def start(self) -> JwksServer:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    @classmethod
    @asynccontextmanager
    async def serving(cls, *signing_keys: SigningKey) -> AsyncIterator[JwksServer]:
        """A started key server publishing ``signing_keys``, stopped afterwards."""
        server = cls()
        server.publish(*signing_keys)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()

    async def stop(self) -> None:
        """Down: the port refuses connections until ``start`` again."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
