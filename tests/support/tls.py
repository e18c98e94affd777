"""TLS in front of the test broker: a throw-away CA (``cryptography``) and Debian's ``stunnel4``.

Tansu speaks plain TCP here; stunnel terminates TLS on other ports and forwards to it. The broker
advertises a TLS port (``LocalKafka(advertised_port=...)``), so every connection a client makes
after the bootstrap goes through TLS too. Each stunnel service has its own certificate, signed by
the same CA: one valid for ``127.0.0.1``/``localhost``, one for another host name only (for
hostname checking).
"""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.process import Started, stop_process


def stunnel_binary() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if not found:
        raise RuntimeError("stunnel is not installed: apt-get install stunnel4 (`.ci/run` does)")
    return found


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    """A CA that signs server certificates into ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "k1s0 test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        slug = name.replace(" ", "-")
        self.cert_file = directory / f"{slug}.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, hosts: Iterable[str], *, client: bool = False) -> tuple[Path, Path]:
        """A certificate for ``hosts`` (DNS names or IP addresses): (certificate file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        key_file.chmod(0o600)
        return cert_file, key_file


class Stunnel(Started):
    """One stunnel process; ``services`` maps a name to (accept port, forward port, cert, key).
    ``client_ca``: services that require a client certificate signed by that CA (mutual TLS)."""

    def __init__(self, services: Mapping[str, tuple[int, int, Path, Path]],
                 client_ca: Mapping[str, Path] | None = None) -> None:
        self.services = dict(services)
        self.client_ca = dict(client_ca or {})
        self.root = Path(tempfile.mkdtemp(prefix="k1s0-stunnel-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> None:
        lines = ["foreground = yes", "pid =", "debug = warning", f"output = {self.root / 'stunnel.log'}", ""]
        for name, (accept, forward, cert, key) in self.services.items():
            lines += [f"[{name}]", f"accept = 127.0.0.1:{accept}", f"connect = 127.0.0.1:{forward}",
                      f"cert = {cert}", f"key = {key}"]
            if name in self.client_ca:
                lines += ["verifyChain = yes", f"CAfile = {self.client_ca[name]}"]
            lines.append("")
        conf = self.root / "stunnel.conf"
        conf.write_text("\n".join(lines))
        self.proc = subprocess.Popen([stunnel_binary(), str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=(self.root / "stderr.log").open("ab"))
        deadline = time.monotonic() + timeout
        for accept, *_ in self.services.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"stunnel exited with {self.proc.returncode}: {self.log()}")
                try:
                    with socket.create_connection(("127.0.0.1", accept), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"stunnel did not listen on {accept} in time: {self.log()}") from None
                    time.sleep(0.05)

    def log(self) -> str:
        text = ""
        for name in ("stunnel.log", "stderr.log"):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")[-2000:]
        return text

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            stop_process(self.proc)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
