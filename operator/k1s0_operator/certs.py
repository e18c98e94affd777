"""The webhook's TLS without cert-manager: a self-signed CA and a serving certificate, rotated.

Kopf's own self-signed path needs ``certbuilder``/``oscrypto``, and oscrypto fails on OpenSSL 3;
this module uses ``cryptography`` instead and hands Kopf's ``WebhookServer`` plain PEM files.

The pure part (``ensure_bundle``) decides, from what is stored and the clock, whether to keep the
certificates, re-issue the serving certificate, or replace the CA too:

* the serving certificate (``serving_days``, default 90) is re-issued when less than a third of its
  life is left or when the service's DNS names changed;
* the CA (``ca_days``, default 10 years) is replaced when less than a third of its life is left;
  the previous CA stays in the ``caBundle`` until it expires, so the API server keeps trusting
  webhook replicas that have not yet reloaded the new certificate.

The operator keeps the bundle in one Secret (shared by all replicas, so they agree on one CA),
writes the files Kopf's server watches (it restarts its listener when they change), and patches
the ``caBundle`` of the MutatingWebhookConfiguration the chart installed (``webhook.py``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Keys of the Secret (the ``kubernetes.io/tls`` layout plus the CA's key and the bundle).
TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
CA_CRT = "ca.crt"
CA_KEY = "ca.key"
CA_BUNDLE = "ca-bundle.crt"


@dataclass(frozen=True, slots=True)
class CertBundle:
    """PEM texts: the CA, the serving certificate signed by it, and what clients should trust."""

    ca_cert: str
    ca_key: str
    cert: str
    key: str
    #: The current CA, plus the previous one while it is still valid.
    ca_bundle: str

    def as_secret_data(self) -> dict[str, str]:
        return {
            CA_CRT: self.ca_cert, CA_KEY: self.ca_key, TLS_CRT: self.cert, TLS_KEY: self.key, CA_BUNDLE: self.ca_bundle
        }

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> CertBundle | None:
        """The bundle stored in a Secret (decoded strings), or None if anything is missing or unreadable."""
        try:
            bundle = cls(
                ca_cert=data[CA_CRT], ca_key=data[CA_KEY], cert=data[TLS_CRT], key=data[TLS_KEY],
                ca_bundle=data.get(CA_BUNDLE) or data[CA_CRT],
            )
            load_cert(bundle.ca_cert)
            load_cert(bundle.cert)
            serialization.load_pem_private_key(bundle.ca_key.encode(), None)
            serialization.load_pem_private_key(bundle.key.encode(), None)
        except (KeyError, ValueError, TypeError):
            return None
        return bundle


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def generate_ca(common_name: str, *, days: int = 3650, now: dt.datetime | None = None) -> tuple[str, str]:
    """A new self-signed CA: (certificate PEM, key PEM)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_serving_cert(
    ca_cert: str, ca_key: str, names: Sequence[str], *, days: int = 90, now: dt.datetime | None = None
) -> tuple[str, str]:
    """A server certificate for ``names`` (DNS names or IPs; the first is the CN), signed by the CA."""
    if not names:
        raise ValueError("a serving certificate needs at least one name")
    now = now or _now()
    ca = load_cert(ca_cert)
    signer = serialization.load_pem_private_key(ca_key.encode(), None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(days=days), ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def _life_left(cert: x509.Certificate, now: dt.datetime) -> float:
    """The fraction of the certificate's validity still ahead (negative once expired)."""
    total = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    return (cert.not_valid_after_utc - now).total_seconds() / total if total > 0 else -1.0


def cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def ensure_bundle(
    current: CertBundle | None,
    names: Sequence[str],
    *,
    common_name: str = "k1s0-eventstore-webhook-ca",
    ca_days: int = 3650,
    serving_days: int = 90,
    renew_fraction: float = 1 / 3,
    now: dt.datetime | None = None,
) -> tuple[CertBundle, bool]:
    """The bundle to serve with, and whether it differs from ``current`` (then store and patch it)."""
    now = now or _now()
    ca_cert = ca_key = None
    old_cas: list[str] = []
    if current is not None:
        ca = load_cert(current.ca_cert)
        if _life_left(ca, now) > renew_fraction:
            ca_cert, ca_key = current.ca_cert, current.ca_key
            serving = load_cert(current.cert)
            fresh = _life_left(serving, now) > renew_fraction
            signed_by_ca = serving.issuer == ca.subject and _verifies(serving, ca)
            if fresh and signed_by_ca and sorted(cert_names(serving)) == sorted(_normalise(names)):
                return current, False
        elif ca.not_valid_after_utc > now:
            old_cas = [current.ca_cert]
    if ca_cert is None or ca_key is None:
        ca_cert, ca_key = generate_ca(common_name, days=ca_days, now=now)
    cert, key = issue_serving_cert(ca_cert, ca_key, names, days=serving_days, now=now)
    return CertBundle(ca_cert, ca_key, cert, key, "".join([ca_cert, *old_cas])), True


def _normalise(names: Sequence[str]) -> list[str]:
    out = []
    for n in names:
        try:
            out.append(str(ipaddress.ip_address(n)))
        except ValueError:
            out.append(n)
    return out


def _verifies(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        return False
    return True


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use for ``service`` in ``namespace``."""
    return [f"{service}.{namespace}.svc", service, f"{service}.{namespace}", f"{service}.{namespace}.svc.cluster.local"]


@dataclass(frozen=True, slots=True)
class CertFiles:
    """The PEM files Kopf's server reads: ``<directory>/current/{tls.crt,tls.key,ca-bundle.crt}``.

    ``current`` is a symbolic link swapped atomically to a freshly written folder, so a reader
    never sees a new certificate with an old key. ``mounted=True`` reads a Secret mounted as a
    folder instead (cert-manager's ``tls.crt``, ``tls.key``, ``ca.crt``), which is never written.
    """

    directory: Path
    mounted: bool = False

    @property
    def current(self) -> Path:
        return self.directory if self.mounted else self.directory / "current"

    @property
    def certfile(self) -> Path:
        return self.current / TLS_CRT

    @property
    def keyfile(self) -> Path:
        return self.current / TLS_KEY

    @property
    def cafile(self) -> Path:
        if self.mounted:
            ca = self.directory / CA_CRT
            return ca if ca.exists() else self.directory / TLS_CRT
        return self.current / CA_BUNDLE

    def read(self) -> tuple[str, str, str] | None:
        try:
            return self.certfile.read_text(), self.keyfile.read_text(), self.cafile.read_text()
        except OSError:
            return None

    def write(self, bundle: CertBundle) -> bool:
        """Write the serving files; False if they were already these."""
        if self.mounted:
            raise ValueError(f"{self.directory} is a mounted Secret; it is not written by the operator")
        if self.read() == (bundle.cert, bundle.key, bundle.ca_bundle):
            return False
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        generation = Path(tempfile.mkdtemp(dir=self.directory, prefix="gen-"))
        for name, text in ((TLS_KEY, bundle.key), (TLS_CRT, bundle.cert), (CA_BUNDLE, bundle.ca_bundle)):
            fd = os.open(generation / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        link = self.directory / f".current-{generation.name}"
        link.symlink_to(generation.name)
        previous = self.current.resolve() if self.current.is_symlink() else None
        os.replace(link, self.current)
        if previous is not None and previous != generation.resolve() and previous.parent == self.directory.resolve():
            shutil.rmtree(previous, ignore_errors=True)
        return True
