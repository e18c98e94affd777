"""``auth.mode: jwt``: bearer tokens verified against the key server's JWKS.

A token is accepted only if all of these hold, checked in this order:

1. the ``Authorization`` value is ``Bearer <token>`` (scheme case-insensitive);
2. its header names an algorithm from ``auth.algorithms`` (RS256 and/or ES256). ``none``, every
   HS* (the "HMAC with the public key" confusion) and anything else are refused before any key
   is looked at;
3. the key named by ``kid`` is in the JWKS, is a signing key, and is bound to that same
   algorithm (an RSA key only ever verifies RS256, a P-256 key only ES256);
4. PyJWT verifies the signature, ``exp`` (required) and ``nbf`` with ``auth.leeway_seconds``,
   ``iss`` when ``auth.issuer`` is set and ``aud`` when ``auth.audience`` is set;
5. ``sub`` is a non-empty string.

Roles are the union of ``realm_access.roles`` and ``resource_access.<auth.client_id>.roles``;
the highest event-store role wins (sys_admin ⊃ sys_operator ⊃ sys_auditor). A valid token with
no event-store role authenticates but is refused by ``authz.check`` (403, not 401).

Keys (``JwksCache``): fetched on first use and cached. A token with an unknown ``kid`` triggers a
refetch, at most one every ``auth.jwks_refetch_seconds`` and one at a time (concurrent requests
share it), so rotated keys are picked up without letting made-up key ids flood the key server.
Cached keys are refreshed in the background after ``auth.jwks_max_age_seconds``. When the key
server cannot be reached, cached keys keep working and a token needing a key we do not have fails
closed with ``UnavailableError`` (503 / UNAVAILABLE: retrying may help), never with a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from k1s0_event_store import UnauthenticatedError, UnavailableError
from k1s0_event_store.sidecar_config import AuthSection

from ._authz import Authenticator, NoAuthenticator, Principal, Role

log = logging.getLogger("k1s0_sidecar.auth")  # the name people filter on; the module is private

#: The only algorithms this module will ever verify, whatever the configuration says.
SUPPORTED_ALGORITHMS = frozenset({"RS256", "ES256"})
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
#: RFC 6750 ``b64token`` after a case-insensitive ``Bearer`` scheme.
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")
#: Longer header values are refused unread (a JWT of ours is well under 4 KiB).
MAX_TOKEN_CHARS = 16 * 1024
#: Largest JWKS document read from the key server.
MAX_JWKS_BYTES = 1024 * 1024
_ROLES_BY_CLAIM = {role.claim: role for role in Role}


class _FetchError(Exception):
    """The key server could not be reached or answered something that is not a usable JWKS."""


@dataclass(frozen=True)
class _KeySet:
    by_kid: Mapping[str, tuple[jwt.PyJWK, ...]]
    all: tuple[jwt.PyJWK, ...]
    fetched_at: float


class JwksCache:
    """The key server's signing keys, fetched with aiohttp, cached, refetched at a bounded rate."""

    def __init__(
        self,
        url: str,
        algorithms: frozenset[str],
        *,
        refetch_seconds: float,
        max_age_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = algorithms
        self.refetch_seconds = refetch_seconds
        self.max_age_seconds = max_age_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._keys: _KeySet | None = None
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        """The key that must verify a token with this header, or UnauthenticatedError /
        UnavailableError."""
        keys = self._keys
        if keys is not None and self.clock() - keys.fetched_at >= self.max_age_seconds:
            self._refresh_in_background()
        found = self._lookup(keys, kid, algorithm)
        if found is not None:
            return found
        await self._refetch()
        found = self._lookup(self._keys, kid, algorithm)
        if found is not None:
            return found
        named = f"key id {kid[:64]!r}" if kid is not None else "a token without a key id (kid)"
        if self._last_error is not None:
            # the key server's address and the failure are in the log, not in the answer to the caller
            raise UnavailableError(f"the key server cannot be reached and {named} is not cached; retry later")
        if kid is None:
            raise UnauthenticatedError("the token names no key id (kid) and the key set has no single matching key")
        raise UnauthenticatedError(f"the token is signed by an unknown key ({named}, {algorithm})")

    def _lookup(self, keys: _KeySet | None, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        if keys is None:
            return None
        if kid is None:
            matching = [k for k in keys.all if k.algorithm_name == algorithm]
            return matching[0] if len(matching) == 1 else None
        candidates = keys.by_kid.get(kid, ())
        for key in candidates:
            if key.algorithm_name == algorithm:
                return key
        if candidates:  # a key we know, used with the wrong algorithm: no refetch will change that
            raise UnauthenticatedError(f"the token's algorithm {algorithm} does not match its key ({kid[:64]!r})")
        return None

    async def _refetch(self) -> None:
        """Join the fetch under way, or start one if the rate limit allows; never raises."""
        task = self._inflight
        if task is None:
            now = self.clock()
            if self._last_attempt is not None and now - self._last_attempt < self.refetch_seconds:
                return
            task = self._start_fetch()
        await asyncio.shield(task)

    def _refresh_in_background(self) -> None:
        if self._inflight is not None:
            return
        if self._last_attempt is not None and self.clock() - self._last_attempt < self.refetch_seconds:
            return
        self._start_fetch()

    def _start_fetch(self) -> asyncio.Task[None]:
        self._last_attempt = self.clock()
        task = asyncio.get_running_loop().create_task(self._fetch(), name="jwks-fetch")
        self._inflight = task
        return task

    async def _fetch(self) -> None:
        try:
            keys = await self._download()
        except _FetchError as exc:
            self._last_error = str(exc)
            cached = "keeping the cached keys" if self._keys is not None else "no keys cached"
            log.warning("JWKS fetch from %s failed: %s (%s)", self.url, exc, cached)
        else:
            previous = set(self._keys.by_kid) if self._keys is not None else set()
            self._keys = keys
            self._last_error = None
            if set(keys.by_kid) != previous:
                log.info("JWKS from %s: key ids %s", self.url, sorted(keys.by_kid))
        finally:
            self._inflight = None

    async def _download(self) -> _KeySet:
        if self._closed:
            raise _FetchError("the authenticator is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
                headers={"Accept": "application/json"},
            )
        try:
            async with self._session.get(self.url, allow_redirects=False) as response:
                if response.status != 200:
                    raise _FetchError(f"HTTP {response.status}")
                body = await response.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _FetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if len(body) > MAX_JWKS_BYTES:
            raise _FetchError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
        return self._parse(body)

    def _parse(self, body: bytes) -> _KeySet:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _FetchError(f"the JWKS is not JSON: {exc}") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise _FetchError('the JWKS has no "keys" list')
        usable: list[jwt.PyJWK] = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                log.debug("JWKS: skipping key %r: %s", entry.get("kid"), exc)
                continue
            if key.algorithm_name in self.algorithms and key.key_type == _KEY_TYPES[key.algorithm_name]:
                usable.append(key)
        if not usable:
            raise _FetchError(f"the JWKS has no usable {'/'.join(sorted(self.algorithms))} signing key")
        by_kid: dict[str, tuple[jwt.PyJWK, ...]] = {}
        for key in usable:
            if isinstance(key.key_id, str):
                by_kid[key.key_id] = (*by_kid.get(key.key_id, ()), key)
        return _KeySet(by_kid, tuple(usable), self.clock())

    async def settled(self) -> None:
        """Wait for a fetch under way (a background refresh) to finish."""
        task = self._inflight
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        self._closed = True
        task = self._inflight
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


class JwtAuthenticator:
    """The ``Authenticator`` of ``auth.mode: jwt``."""

    def __init__(self, auth: AuthSection, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not auth.jwks_url:
            raise ValueError("auth.jwks_url is required for auth.mode jwt")
        algorithms = frozenset(auth.algorithms)
        if not algorithms or not algorithms <= SUPPORTED_ALGORITHMS:
            raise ValueError(f"auth.algorithms must be a subset of {sorted(SUPPORTED_ALGORITHMS)}")
        self.auth = auth
        self.algorithms = algorithms
        self.keys = JwksCache(
            auth.jwks_url,
            algorithms,
            refetch_seconds=auth.jwks_refetch_seconds,
            max_age_seconds=auth.jwks_max_age_seconds,
            timeout_seconds=auth.jwks_timeout_seconds,
            clock=clock,
        )
        required = ["exp", "sub"]
        if auth.issuer:
            required.append("iss")
        if auth.audience:
            required.append("aud")
        self._options: dict[str, Any] = {
            "require": required,
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": bool(auth.issuer),
            "verify_aud": bool(auth.audience),
            "enforce_minimum_key_length": True,
        }

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"malformed token: {exc}") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise UnauthenticatedError(
                f"token algorithm {algorithm!r} is not accepted (accepted: {', '.join(sorted(self.algorithms))})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise UnauthenticatedError("malformed token: kid must be a string")
        key = await self.keys.key_for(kid, algorithm)
        claims = self._verify(token, key)
        return principal_from_claims(claims, self.auth.client_id)

    def _verify(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                audience=self.auth.audience or None,
                issuer=self.auth.issuer or None,
                leeway=self.auth.leeway_seconds,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise UnauthenticatedError("the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError("the token's issuer (iss) is not accepted") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError("the token's audience (aud) is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthenticatedError(f"the token lacks the required {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("the token's signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"invalid token: {exc}") from None
        return claims

    async def close(self) -> None:
        await self.keys.close()


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value, or UnauthenticatedError."""
    if authorization is None or not authorization.strip():
        raise UnauthenticatedError("authentication required: send Authorization: Bearer <token>")
    if len(authorization) > MAX_TOKEN_CHARS:
        raise UnauthenticatedError("malformed token: the Authorization value is too long")
    match = _BEARER.match(authorization)
    if match is None:
        raise UnauthenticatedError("malformed Authorization value: expected Bearer <token>")
    return match.group(1)


def _role_names(container: Any) -> list[str]:
    roles = container.get("roles") if isinstance(container, dict) else None
    if not isinstance(roles, list):
        return []
    return [r for r in roles if isinstance(r, str)]


def principal_from_claims(claims: Mapping[str, Any], client_id: str) -> Principal:
    """The caller named by verified claims: ``sub``, realm roles and ``client_id``'s roles."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise UnauthenticatedError("the token's subject (sub) must be a non-empty string")
    names = _role_names(claims.get("realm_access"))
    if client_id:
        resource_access = claims.get("resource_access")
        if isinstance(resource_access, dict):
            names += _role_names(resource_access.get(client_id))
    held = [_ROLES_BY_CLAIM[n] for n in names if n in _ROLES_BY_CLAIM]
    return Principal(subject=subject, role=max(held, default=None), roles=frozenset(names))


def make_authenticator(auth: AuthSection) -> Authenticator:
    """``auth.mode: jwt`` -> JwtAuthenticator; ``none`` -> NoAuthenticator (development only)."""
    if auth.mode == "none":
        return NoAuthenticator()
    return JwtAuthenticator(auth)
