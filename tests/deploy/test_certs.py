"""Self-signed webhook certificates: issuance, renewal decisions, files, and real TLS serving."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from k1s0_operator import certs, webhook
from k1s0_operator.injection import InjectionSettings
from tests.deploy.conftest import app_pod, eventstream
from tests.deploy.kopf_webhook import Streams, served_webhook
from tests.deploy.test_webhook import review
from tests.support.postgres import free_port

NAMES = certs.service_names("k1s0-eventstore-webhook", "k1s0-system")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_new_bundle_is_a_ca_and_a_serving_cert_for_the_service() -> None:
    bundle, changed = certs.ensure_bundle(None, NAMES, now=T0)
    assert changed
    ca, cert = certs.load_cert(bundle.ca_cert), certs.load_cert(bundle.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    cert.verify_directly_issued_by(ca)
    assert sorted(certs.cert_names(cert)) == sorted(NAMES)
    assert "k1s0-eventstore-webhook.k1s0-system.svc" in certs.cert_names(cert)
    assert bundle.ca_bundle == bundle.ca_cert
    assert cert.not_valid_after_utc - T0 <= dt.timedelta(days=90)


def test_a_fresh_bundle_is_kept() -> None:
    bundle, _ = certs.ensure_bundle(None, NAMES, now=T0)
    again, changed = certs.ensure_bundle(bundle, list(reversed(NAMES)), now=T0 + dt.timedelta(days=30))
    assert not changed and again is bundle


def test_serving_cert_is_renewed_with_a_third_of_its_life_left_same_ca() -> None:
    bundle, _ = certs.ensure_bundle(None, NAMES, now=T0)
    renewed, changed = certs.ensure_bundle(bundle, NAMES, now=T0 + dt.timedelta(days=61))
    assert changed
    assert renewed.ca_cert == bundle.ca_cert and renewed.ca_bundle == bundle.ca_bundle, "no caBundle change"
    assert renewed.cert != bundle.cert
    certs.load_cert(renewed.cert).verify_directly_issued_by(certs.load_cert(bundle.ca_cert))


def test_serving_cert_is_reissued_when_the_names_change() -> None:
    bundle, _ = certs.ensure_bundle(None, NAMES, now=T0)
    other = certs.service_names("renamed", "k1s0-system")
    renewed, changed = certs.ensure_bundle(bundle, other, now=T0)
    assert changed and sorted(certs.cert_names(certs.load_cert(renewed.cert))) == sorted(other)
    assert renewed.ca_cert == bundle.ca_cert


def test_ca_rotation_keeps_the_old_ca_trusted_until_it_expires() -> None:
    bundle, _ = certs.ensure_bundle(None, NAMES, now=T0, ca_days=30, serving_days=10)
    later = T0 + dt.timedelta(days=25)
    rotated, changed = certs.ensure_bundle(bundle, NAMES, now=later, ca_days=30, serving_days=10)
    assert changed and rotated.ca_cert != bundle.ca_cert
    assert rotated.ca_bundle == rotated.ca_cert + bundle.ca_cert
    certs.load_cert(rotated.cert).verify_directly_issued_by(certs.load_cert(rotated.ca_cert))
    # Once the old CA has expired it is dropped from the bundle at the next rotation.
    expired, _ = certs.ensure_bundle(bundle, NAMES, now=T0 + dt.timedelta(days=31), ca_days=30, serving_days=10)
    assert expired.ca_bundle == expired.ca_cert


def test_secret_data_round_trip_and_garbage() -> None:
    bundle, _ = certs.ensure_bundle(None, NAMES, now=T0)
    assert certs.CertBundle.from_secret_data(bundle.as_secret_data()) == bundle
    assert certs.CertBundle.from_secret_data({}) is None
    broken = {**bundle.as_secret_data(), certs.TLS_KEY: "-----BEGIN PRIVATE KEY-----\nnope\n"}
    assert certs.CertBundle.from_secret_data(broken) is None


def test_files_are_swapped_as_one(tmp_path: Path) -> None:
    files = certs.CertFiles(tmp_path / "tls")
    first, _ = certs.ensure_bundle(None, ["localhost"])
    assert files.write(first) is True
    assert files.write(first) is False, "unchanged files are not rewritten"
    assert files.read() == (first.cert, first.key, first.ca_bundle)
    second, _ = certs.ensure_bundle(None, ["localhost"])
    assert files.write(second) is True
    assert files.read() == (second.cert, second.key, second.ca_bundle)
    assert len([p for p in (tmp_path / "tls").iterdir() if p.name.startswith("gen-")]) == 1, "old generation removed"
    mounted = certs.CertFiles(files.current.resolve(), mounted=True)
    assert mounted.certfile.read_text() == second.cert
    with pytest.raises(ValueError, match="mounted"):
        mounted.write(first)


async def served_cert(url: str) -> str:
    """The certificate the server presents right now (no verification: just look at it)."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    try:
        return await asyncio.to_thread(ssl.get_server_certificate, (host, int(port)))
    except OSError:  # the listener is restarting
        return ""


@pytest.fixture
async def tls_webhook(tmp_path: Path) -> AsyncIterator[tuple[str, certs.CertFiles]]:
    files = certs.CertFiles(tmp_path / "tls")
    settings = webhook.WebhookSettings(address="127.0.0.1", port=free_port(), file_check_seconds=0.05)
    bundle, _ = certs.ensure_bundle(None, settings.names)
    files.write(bundle)
    streams = Streams({("shop", "orders"): eventstream("orders")})
    server = webhook.build_server(settings, files)
    async with served_webhook(server, streams, InjectionSettings(image="k1s0-eventstore:test")) as url:
        yield url, files


async def _post(url: str, ca_bundle: str) -> int:
    context = ssl.create_default_context(cadata=ca_bundle)
    async with aiohttp.ClientSession() as session, session.post(url, json=review(app_pod()), ssl=context) as resp:
        assert (await resp.json())["response"]["allowed"] is True
        return resp.status


async def test_served_over_tls_and_reloaded_after_rotation(tls_webhook: tuple[str, certs.CertFiles]) -> None:
    url, files = tls_webhook
    assert url.startswith("https://127.0.0.1:")
    assert await _post(url, files.cafile.read_text()) == 200
    first = await served_cert(url)
    assert first == files.certfile.read_text()
    # An untrusted client is refused by TLS itself.
    stranger, _ = certs.ensure_bundle(None, ["localhost"])
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _post(url, stranger.ca_cert)
    # Rotate: a new CA and serving certificate; Kopf's server notices the files and restarts.
    rotated, _ = certs.ensure_bundle(None, webhook.WebhookSettings().names)
    files.write(rotated)
    deadline = asyncio.get_running_loop().time() + 20
    while (served := await served_cert(url)) != rotated.cert:
        assert served in (first, ""), "only the old or the new certificate is ever served"
        assert asyncio.get_running_loop().time() < deadline, "the server did not pick up the new files"
        await asyncio.sleep(0.05)  # polling interval of a deadline-bounded wait, not a synchronisation sleep
    assert await _post(url, rotated.ca_cert) == 200
