"""JwtAuthenticator against a real JWKS HTTP server, with real RSA/EC keys and real tokens."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from k1s0_event_store import PermissionDeniedError, UnauthenticatedError, UnavailableError
from k1s0_event_store.sidecar_config import AuthSection, ConfigError, load_config
from k1s0_sidecar._auth import JwtAuthenticator, bearer_token, make_authenticator
from k1s0_sidecar._authz import NoAuthenticator, Role, check
from tests.auth.conftest import Clock, section
from tests.auth.support import AUDIENCE, CLIENT_ID, ISSUER, JwksServer, SigningKey, claims, forge


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def refused(authn: JwtAuthenticator, authorization: str | None, *words: str) -> str:
    with pytest.raises(UnauthenticatedError) as info:
        await authn.authenticate(authorization)
    assert info.value.code == "SYS_EVSTORE_UNAUTHENTICATED"
    for word in words:
        assert word in info.value.message, info.value.message
    return info.value.message


# -- valid tokens and roles --------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("key_name", ["rsa_key", "ec_key"])
async def test_valid_token_per_role(
    authn: JwtAuthenticator, role: Role, key_name: str, request: pytest.FixtureRequest
) -> None:
    key: SigningKey = request.getfixturevalue(key_name)
    principal = await authn.authenticate(bearer(key.sign(claims("user-7", [role.claim, "offline_access"]))))
    assert principal.subject == "user-7"
    assert principal.role is role
    assert principal.roles == {role.claim, "offline_access"}
    assert not principal.anonymous
    check(principal, role)
    for lower in Role:
        if lower <= role:
            check(principal, lower)
        else:
            with pytest.raises(PermissionDeniedError):
                check(principal, lower)


async def test_client_roles_count_and_the_highest_role_wins(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    token = rsa_key.sign(claims(roles=["sys_auditor"], client_roles={CLIENT_ID: ["sys_admin"]}))
    assert (await authn.authenticate(bearer(token))).role is Role.SYS_ADMIN
    only_client = rsa_key.sign(claims(roles=None, client_roles={CLIENT_ID: ["sys_operator"]}))
    assert (await authn.authenticate(bearer(only_client))).role is Role.SYS_OPERATOR


async def test_roles_of_other_clients_and_unknown_names_do_not_count(
    authn: JwtAuthenticator, rsa_key: SigningKey
) -> None:
    token = rsa_key.sign(
        claims(roles=["SYS_ADMIN", "admin", "sys_admins"], client_roles={"another-client": ["sys_admin"]})
    )
    principal = await authn.authenticate(bearer(token))
    assert principal.role is None
    with pytest.raises(PermissionDeniedError) as info:
        check(principal, Role.SYS_AUDITOR)
    assert info.value.code == "SYS_EVSTORE_PERMISSION_DENIED"


async def test_malformed_role_claims_are_ignored_not_fatal(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    token = rsa_key.sign(
        claims(roles=None, realm_access={"roles": "sys_admin"}, resource_access={CLIENT_ID: ["sys_admin"]})
    )
    assert (await authn.authenticate(bearer(token))).role is None
    mixed = rsa_key.sign(claims(roles=[1, None, {"x": 1}, "sys_operator"]))  # type: ignore[list-item]
    assert (await authn.authenticate(bearer(mixed))).role is Role.SYS_OPERATOR


async def test_no_client_id_configured_ignores_resource_access(jwks: JwksServer, rsa_key: SigningKey) -> None:
    authn = JwtAuthenticator(section(jwks, client_id=""))
    try:
        token = rsa_key.sign(claims(roles=["sys_auditor"], client_roles={CLIENT_ID: ["sys_admin"]}))
        assert (await authn.authenticate(bearer(token))).role is Role.SYS_AUDITOR
    finally:
        await authn.close()


async def test_scheme_is_case_insensitive(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    token = rsa_key.sign(claims(roles=["sys_auditor"]))
    for scheme in ("bearer", "BEARER", "Bearer  "):
        assert (await authn.authenticate(f"{scheme} {token}")).subject == "user-001"


# -- time, issuer, audience ---------------------------------------------------------------------


async def test_expired_token(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], exp_in=-120))), "expired")


async def test_expiry_within_the_leeway_is_accepted(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    principal = await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_admin"], exp_in=-10))))
    assert principal.role is Role.SYS_ADMIN


async def test_token_without_exp_is_refused(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], exp_in=None))), "exp")


async def test_not_yet_valid_token(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], nbf_in=120))), "not valid yet")
    # inside the leeway: clocks a little apart are fine
    assert (await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_admin"], nbf_in=10))))).role


async def test_issued_in_the_future_is_refused(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    token = rsa_key.sign(claims(roles=["sys_admin"], iat=int(time.time()) + 3600))
    await refused(authn, bearer(token), "not valid yet")


async def test_leeway_is_configurable(jwks: JwksServer, rsa_key: SigningKey) -> None:
    strict = JwtAuthenticator(section(jwks, leeway_seconds=0))
    try:
        await refused(strict, bearer(rsa_key.sign(claims(roles=["sys_admin"], exp_in=-10))), "expired")
    finally:
        await strict.close()


async def test_wrong_issuer(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], iss="https://evil.test/realms/k1s0"))),
                  "issuer")
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], iss=None))), "iss")


async def test_wrong_audience(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], aud="another-service"))), "audience")
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], aud=None))), "aud")


async def test_audience_list_containing_ours_is_accepted(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    token = rsa_key.sign(claims(roles=["sys_auditor"], aud=["account", AUDIENCE]))
    assert (await authn.authenticate(bearer(token))).role is Role.SYS_AUDITOR


async def test_issuer_and_audience_unchecked_when_not_configured(jwks: JwksServer, rsa_key: SigningKey) -> None:
    lenient = JwtAuthenticator(section(jwks, issuer="", audience=""))
    try:
        token = rsa_key.sign(claims(roles=["sys_auditor"], iss="https://any.test", aud="account"))
        assert (await lenient.authenticate(bearer(token))).role is Role.SYS_AUDITOR
        bare = rsa_key.sign(claims(roles=["sys_auditor"], iss=None, aud=None))
        assert (await lenient.authenticate(bearer(bare))).role is Role.SYS_AUDITOR
    finally:
        await lenient.close()


# -- subject ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "", "   ", 42, ["user-001"]])
async def test_subject_is_required(authn: JwtAuthenticator, rsa_key: SigningKey, sub: Any) -> None:
    body = claims(None, ["sys_admin"])
    if sub is not None:
        body["sub"] = sub
    await refused(authn, bearer(rsa_key.sign(body)))


# -- signatures and algorithms ------------------------------------------------------------------


async def test_bad_signature(authn: JwtAuthenticator, rsa_key: SigningKey, rsa_key_2: SigningKey) -> None:
    # signed by another key under our key's kid
    await refused(authn, bearer(rsa_key_2.sign(claims(roles=["sys_admin"]), kid=rsa_key.kid)), "signature")
    # a real token with its payload swapped for an admin one
    header, _, signature = rsa_key.sign(claims(roles=["sys_auditor"])).split(".")
    _, payload, _ = rsa_key.sign(claims(roles=["sys_admin"])).split(".")
    await refused(authn, bearer(f"{header}.{payload}.{signature}"), "signature")
    # a truncated signature
    token = rsa_key.sign(claims(roles=["sys_admin"]))
    await refused(authn, bearer(token[:-10]))


async def test_ec_signature_from_another_ec_key(authn: JwtAuthenticator, ec_key: SigningKey) -> None:
    other = SigningKey.ec(ec_key.kid)
    await refused(authn, bearer(other.sign(claims(roles=["sys_admin"]))), "signature")


async def test_alg_none_is_refused(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    body = claims(roles=["sys_admin"])
    unsigned = jwt.encode(body, None, algorithm="none", headers={"kid": rsa_key.kid})  # type: ignore[arg-type]
    await refused(authn, bearer(unsigned), "'none'", "not accepted")
    for alg in ("None", "NONE", "nOnE"):
        await refused(authn, bearer(forge({"alg": alg, "kid": rsa_key.kid}, body)), "not accepted")
    await refused(authn, bearer(forge({"kid": rsa_key.kid}, body)), "not accepted")  # no alg at all


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_signed_with_the_public_key_is_refused(
    authn: JwtAuthenticator, jwks: JwksServer, rsa_key: SigningKey, alg: str
) -> None:
    body = claims(roles=["sys_admin"])
    for secret in (rsa_key.public_pem(), rsa_key.jwk()["n"].encode()):
        token = forge({"alg": alg, "typ": "JWT", "kid": rsa_key.kid}, body, hmac_secret=secret)
        await refused(authn, bearer(token), alg, "not accepted")
    assert jwks.requests == 0  # refused before any key was looked up


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES384", "ES512", "EdDSA"])
async def test_other_asymmetric_algorithms_are_refused(authn: JwtAuthenticator, rsa_key: SigningKey, alg: str) -> None:
    await refused(authn, bearer(forge({"alg": alg, "kid": rsa_key.kid}, claims(roles=["sys_admin"]), b"x" * 64)),
                  "not accepted")


async def test_algorithm_must_match_the_key(authn: JwtAuthenticator, rsa_key: SigningKey, ec_key: SigningKey) -> None:
    # an ES256 token naming the RSA key's kid (and vice versa): refused, and no refetch
    await refused(authn, bearer(ec_key.sign(claims(roles=["sys_admin"]), kid=rsa_key.kid)), "does not match")
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"]), kid=ec_key.kid)), "does not match")


async def test_algorithms_can_be_narrowed(jwks: JwksServer, rsa_key: SigningKey, ec_key: SigningKey) -> None:
    rs_only = JwtAuthenticator(section(jwks, algorithms=["RS256"]))
    try:
        assert (await rs_only.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))).role
        await refused(rs_only, bearer(ec_key.sign(claims(roles=["sys_auditor"]))), "ES256", "not accepted")
    finally:
        await rs_only.close()


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")
async def test_unusable_keys_in_the_jwks_are_ignored(jwks: JwksServer, rsa_key: SigningKey, ec_key: SigningKey) -> None:
    """Symmetric (oct) keys, encryption keys, keys bound to other algorithms, short RSA keys."""
    weak = SigningKey.rsa("weak", bits=1024)
    enc = SigningKey.rsa("enc-key")
    rs384 = SigningKey.rsa("rs384")
    jwks.keys = [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        enc.jwk(use="enc"),
        rs384.jwk(alg="RS384"),
        weak.jwk(),
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key",  # type: ignore[list-item]
        rsa_key.jwk(),
    ]
    authn = JwtAuthenticator(section(jwks, jwks_refetch_seconds=3600))
    try:
        assert (await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))).role
        hmac_token = forge({"alg": "HS256", "kid": "hmac"}, claims(roles=["sys_admin"]), hmac_secret=b"secret")
        await refused(authn, bearer(hmac_token), "not accepted")
        await refused(authn, bearer(enc.sign(claims(roles=["sys_admin"]))), "unknown key")
        await refused(authn, bearer(rs384.sign(claims(roles=["sys_admin"]))), "unknown key")
        await refused(authn, bearer(weak.sign(claims(roles=["sys_admin"]))), "2048")
    finally:
        await authn.close()


async def test_token_without_kid_uses_the_only_matching_key(
    jwks: JwksServer, rsa_key: SigningKey, ec_key: SigningKey, rsa_key_2: SigningKey
) -> None:
    authn = JwtAuthenticator(section(jwks))
    try:
        assert (await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]), kid=None)))).role
        assert (await authn.authenticate(bearer(ec_key.sign(claims(roles=["sys_auditor"]), kid=None)))).role
    finally:
        await authn.close()
    jwks.publish(rsa_key, rsa_key_2)
    ambiguous = JwtAuthenticator(section(jwks))
    try:
        await refused(ambiguous, bearer(rsa_key.sign(claims(roles=["sys_auditor"]), kid=None)), "kid")
    finally:
        await ambiguous.close()


# -- malformed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "Bearerabc.def.ghi",
        "Bearer abc def",
        "Bearer a.b",
        "Bearer a.b.c.d.e",
        "Bearer !!!.###.$$$",
        "Bearer ....",
        "Bearer eyJhbGciOiJSUzI1NiJ9",
        "Bearer bm90IGpzb24.eyJzdWIiOiJ4In0.c2ln",
        "Bearer W10.eyJzdWIiOiJ4In0.c2ln",  # header is a JSON list
        "Bearer " + "a" * 20000,
        "Bearer tok\u00e9n.a.b",
    ],
)
async def test_malformed_authorization_values(authn: JwtAuthenticator, authorization: str | None) -> None:
    await refused(authn, authorization)


async def test_malformed_payload_and_header_fields(authn: JwtAuthenticator, rsa_key: SigningKey) -> None:
    await refused(authn, bearer(forge({"alg": "RS256", "kid": 7}, claims())), "Key ID")
    await refused(authn, bearer(forge({"alg": "RS256", "kid": rsa_key.kid, "crit": ["exp-ext"]}, claims())))
    # a signed payload that is not a JSON object
    header, _, _ = rsa_key.sign(claims()).split(".")
    await refused(authn, bearer(f"{header}.WzEsMiwzXQ.c2ln"))
    # exp that is not a number
    await refused(authn, bearer(rsa_key.sign({**claims(roles=["sys_admin"]), "exp": "tomorrow"})))


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc.def-_.gh~+/==") == "abc.def-_.gh~+/=="
    with pytest.raises(UnauthenticatedError, match="Bearer"):
        bearer_token(None)


# -- the key server: caching, rotation, rate limit, outage -----------------------------------------


async def test_keys_are_cached(authn: JwtAuthenticator, jwks: JwksServer, rsa_key: SigningKey,
                               ec_key: SigningKey) -> None:
    for key in (rsa_key, ec_key, rsa_key, ec_key):
        await authn.authenticate(bearer(key.sign(claims(roles=["sys_auditor"]))))
    assert jwks.requests == 1


async def test_unknown_kid_then_rotated_keys_are_accepted(
    authn: JwtAuthenticator, jwks: JwksServer, clock: Clock, rsa_key: SigningKey
) -> None:
    await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))
    rotated = SigningKey.rsa("rsa-rotated")
    new_token = bearer(rotated.sign(claims(roles=["sys_operator"])))
    clock.advance(60)
    await refused(authn, new_token, "unknown key", "rsa-rotated")  # the key server does not know it yet
    assert jwks.requests == 2
    jwks.publish(rotated)  # rotation: the new key in, the old one out
    clock.advance(10)
    assert (await authn.authenticate(new_token)).role is Role.SYS_OPERATOR
    assert jwks.requests == 3
    # the retired key is gone with the new key set
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_auditor"]))), "unknown key")


async def test_unknown_kid_refetch_is_rate_limited(
    authn: JwtAuthenticator, jwks: JwksServer, clock: Clock, rsa_key: SigningKey
) -> None:
    await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))
    assert jwks.requests == 1
    made_up = [bearer(rsa_key.sign(claims(roles=["sys_admin"]), kid=f"made-up-{i}")) for i in range(50)]
    for token in made_up:
        await refused(authn, token, "unknown key")
    assert jwks.requests == 1  # within jwks_refetch_seconds of the first fetch: no refetch at all
    clock.advance(10)
    for token in made_up:
        await refused(authn, token, "unknown key")
    assert jwks.requests == 2  # one refetch per interval, however many tokens
    # known keys are unaffected throughout
    assert (await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))).role


async def test_concurrent_unknown_kids_share_one_fetch(
    authn: JwtAuthenticator, jwks: JwksServer, rsa_key: SigningKey
) -> None:
    rotated = SigningKey.ec("ec-new")
    jwks.publish(rsa_key, rotated)
    token = bearer(rotated.sign(claims(roles=["sys_auditor"])))
    results = await asyncio.gather(*(authn.authenticate(token) for _ in range(40)))
    assert {p.role for p in results} == {Role.SYS_AUDITOR}
    assert jwks.requests == 1


async def test_stale_keys_are_refreshed_in_the_background(
    authn: JwtAuthenticator, jwks: JwksServer, clock: Clock, rsa_key: SigningKey, rsa_key_2: SigningKey
) -> None:
    old = bearer(rsa_key.sign(claims(roles=["sys_auditor"])))
    await authn.authenticate(old)
    jwks.publish(rsa_key_2)  # rsa-1 revoked at the key server
    clock.advance(299)
    await authn.authenticate(old)
    assert jwks.requests == 1
    clock.advance(1)
    await authn.authenticate(old)  # served from the cache while the refresh runs
    await authn.keys.settled()
    assert jwks.requests == 2
    await refused(authn, old, "unknown key")


async def test_jwks_down_cached_keys_keep_working_new_kid_fails_closed(
    authn: JwtAuthenticator, jwks: JwksServer, clock: Clock, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))
    await jwks.stop()
    clock.advance(3600)  # the cache is stale, and the refresh fails
    for key in (rsa_key, ec_key):
        assert (await authn.authenticate(bearer(key.sign(claims(roles=["sys_operator"]))))).role is Role.SYS_OPERATOR
    await authn.keys.settled()
    rotated = SigningKey.rsa("rsa-after-outage")
    new_token = bearer(rotated.sign(claims(roles=["sys_admin"])))
    clock.advance(10)
    with pytest.raises(UnavailableError) as info:
        await authn.authenticate(new_token)
    assert info.value.code == "SYS_EVSTORE_UNAVAILABLE"
    assert "rsa-after-outage" in info.value.message and "key server" in info.value.message
    assert str(jwks.port) not in info.value.message  # internal addresses stay in the log
    # within the rate limit it stays closed without hammering the key server
    with pytest.raises(UnavailableError):
        await authn.authenticate(new_token)
    # an invalid token with a cached key is still a 401, not a 503
    await refused(authn, bearer(rsa_key.sign(claims(roles=["sys_admin"], exp_in=-3600))), "expired")
    # the key server comes back with the new key
    jwks.publish(rotated)
    await jwks.start()
    clock.advance(10)
    assert (await authn.authenticate(new_token)).role is Role.SYS_ADMIN


async def test_jwks_down_from_the_start(jwks: JwksServer, clock: Clock, rsa_key: SigningKey) -> None:
    await jwks.stop()
    authn = JwtAuthenticator(section(jwks), clock=clock)
    try:
        with pytest.raises(UnavailableError, match="cannot be reached"):
            await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))
        await jwks.start()
        with pytest.raises(UnavailableError):  # rate limited: not retried yet
            await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))
        clock.advance(10)
        assert (await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))).role
        assert jwks.requests == 1
    finally:
        await authn.close()


@pytest.mark.parametrize("mode", ["error", "garbage", "empty", "hang"])
async def test_jwks_answering_badly_fails_closed(
    jwks: JwksServer, clock: Clock, rsa_key: SigningKey, mode: str
) -> None:
    if mode == "empty":
        jwks.keys = []
    else:
        jwks.mode = mode
    authn = JwtAuthenticator(section(jwks, jwks_timeout_seconds=0.3), clock=clock)
    try:
        with pytest.raises(UnavailableError):
            await authn.authenticate(bearer(rsa_key.sign(claims(roles=["sys_auditor"]))))
    finally:
        await authn.close()


# -- the factory and the configuration -----------------------------------------------------------


async def test_make_authenticator(jwks: JwksServer) -> None:
    none = make_authenticator(AuthSection(mode="none"))
    assert isinstance(none, NoAuthenticator)
    principal = await none.authenticate(None)
    assert principal.anonymous and principal.role is Role.SYS_ADMIN
    real = make_authenticator(section(jwks))
    try:
        assert isinstance(real, JwtAuthenticator)
        await refused(real, None)
    finally:
        await real.close()


def test_config_keys() -> None:
    base = {"EVENTSTORE_AUTH_JWKS_URL": "http://keys.test/jwks.json"}
    c = load_config(None, env={**base, "EVENTSTORE_AUTH_ALGORITHMS": "ES256", "EVENTSTORE_AUTH_ISSUER": ISSUER,
                               "EVENTSTORE_AUTH_AUDIENCE": AUDIENCE, "EVENTSTORE_AUTH_JWKS_REFETCH_SECONDS": "0"})
    assert c.auth.algorithms == ["ES256"] and c.auth.jwks_refetch_seconds == 0
    assert load_config(None, env=base).auth.algorithms == ["RS256", "ES256"]
    for bad in ("HS256", "none", "RS256,HS256", ""):
        with pytest.raises(ConfigError, match=r"auth\.algorithms"):
            load_config(None, env={**base, "EVENTSTORE_AUTH_ALGORITHMS": bad})
    with pytest.raises(ConfigError, match=r"auth\.jwks_url"):
        load_config(None, env={"EVENTSTORE_AUTH_MODE": "jwt"})
    with pytest.raises(ValueError):
        JwtAuthenticator(AuthSection(jwks_url="http://x", algorithms=["HS256"]))
