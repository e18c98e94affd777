"""How a Kafka client proves who it is and whom it talks to: TLS and SASL settings, checked once,
turned into the keyword arguments every aiokafka client takes.

One builder for every client of the project (the sidecar's forwarder, the operator's topic
administration, ``EventConsumer``), so that a setting means the same everywhere and a mistake is
reported the same way: ``KafkaSecurityError`` names the key (``kafka.ssl_ca_file: file not found
...``), never a bare ``ValueError`` from deep inside a client.

* ``security_protocol``: ``PLAINTEXT``, ``SSL`` (TLS), ``SASL_PLAINTEXT`` (SASL, no TLS: the
  password is protected only by the mechanism, PLAIN sends it readable), ``SASL_SSL``.
* TLS (``SSL``, ``SASL_SSL``): the brokers' certificates are verified against ``ssl_ca_file`` (the
  system's trusted CAs when empty) and, unless ``ssl_check_hostname`` is false, must name the host
  the client connects to. ``ssl_cert_file``/``ssl_key_file``: a client certificate (mutual TLS).
* SASL (``SASL_PLAINTEXT``, ``SASL_SSL``): ``sasl_mechanism`` PLAIN, SCRAM-SHA-256 or
  SCRAM-SHA-512 with ``sasl_username`` and either ``sasl_password`` or ``sasl_password_file``. The
  file is read each time a client is built, so a rotated password (a re-rendered Vault file, an
  updated Secret volume) is used by the next connection without a restart.

Settings that the chosen protocol would ignore (a CA file with ``PLAINTEXT``, a mechanism with
``SSL``) are refused: they are almost always a protocol that was meant to be set and was not, and
ignoring them would send data in the clear that the operator believed encrypted.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """A TLS/SASL setting that cannot be used; ``key`` is the setting's full name."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class KafkaSecurityKeys:
    """The TLS/SASL keys themselves, as the configuration file names them (see the module's
    description). ``KafkaSecurity`` checks and uses them; the sidecar's ``kafka`` configuration
    section declares them by inheriting this class."""

    security_protocol: str = "PLAINTEXT"
    #: TLS (security_protocol SSL or SASL_SSL): the CA that signed the brokers' certificates (empty:
    #: the system's trusted CAs), a client certificate and key for mutual TLS, hostname checking.
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    ssl_check_hostname: bool = True
    #: SASL (security_protocol SASL_PLAINTEXT or SASL_SSL): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    sasl_mechanism: str = ""
    sasl_username: str = ""
    #: The password, or a file holding it (read at each connection: rotation needs no restart).
    sasl_password: str = field(default="", repr=False)
    sasl_password_file: str = ""

    @property
    def security(self) -> KafkaSecurity:
        """These keys as the shared builder of aiokafka's client options."""
        return KafkaSecurity(**{f.name: getattr(self, f.name) for f in fields(KafkaSecurityKeys)})


@dataclass(frozen=True)
class KafkaSecurity(KafkaSecurityKeys):
    """The TLS/SASL part of a Kafka client's settings, checked and turned into client options.

    ``prefix`` is how the keys are named in errors: ``kafka.`` for the configuration file, empty
    for code that passes the values directly.
    """

    prefix: str = "kafka."

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def _error(self, key: str, message: str) -> KafkaSecurityError:
        return KafkaSecurityError(self.prefix + key, message)

    def validate(self) -> None:
        """Check every setting (files included: they are opened and parsed); raise on the first bad one."""
        self.client_options()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaClient``, ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and
        ``AIOKafkaAdminClient``: ``security_protocol`` and, as the protocol needs them,
        ``ssl_context`` and ``sasl_mechanism``/``sasl_plain_username``/``sasl_plain_password``."""
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise self._error("security_protocol", f"must be one of {', '.join(SECURITY_PROTOCOLS)} (got {protocol!r})")
        options: dict[str, Any] = {"security_protocol": protocol}
        if self.uses_tls:
            options["ssl_context"] = self._ssl_context()
        else:
            for key in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
                if getattr(self, key):
                    raise self._error(
                        key, f"is set, but {self.prefix}security_protocol is {protocol}: TLS settings apply only"
                        " with SSL or SASL_SSL (set the protocol, or remove the setting)",
                    )
        if self.uses_sasl:
            options.update(self._sasl())
        else:
            for key in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file"):
                if getattr(self, key):
                    raise self._error(
                        key, f"is set, but {self.prefix}security_protocol is {protocol}: SASL settings apply only"
                        " with SASL_PLAINTEXT or SASL_SSL (set the protocol, or remove the setting)",
                    )
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        # The standard library's defaults for a client: certificate verification required, the
        # system's trusted CAs, TLS 1.2 at least, hostname checking on.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ssl_ca_file:
            self._readable("ssl_ca_file")
            try:
                context.load_verify_locations(cafile=self.ssl_ca_file)
            except (ssl.SSLError, ValueError) as exc:
                raise self._error(
                    "ssl_ca_file", f"{self.ssl_ca_file} holds no usable PEM certificate ({exc})"
                ) from None
        if self.ssl_key_file and not self.ssl_cert_file:
            raise self._error("ssl_cert_file", f"required when {self.prefix}ssl_key_file is set (mutual TLS)")
        if self.ssl_cert_file:
            self._pem("ssl_cert_file", "certificate")
            key_holder = "ssl_key_file" if self.ssl_key_file else "ssl_cert_file"
            self._pem(key_holder, "private key")
            try:
                context.load_cert_chain(self.ssl_cert_file, self.ssl_key_file or None)
            except ssl.SSLError as exc:
                if "KEY_VALUES_MISMATCH" in str(exc):
                    raise self._error(
                        "ssl_key_file" if self.ssl_key_file else "ssl_cert_file",
                        f"the private key does not belong to the certificate in {self.ssl_cert_file}",
                    ) from None
                raise self._error(key_holder, f"cannot load the client certificate and key ({exc})") from None
        context.check_hostname = bool(self.ssl_check_hostname)
        return context

    def _sasl(self) -> dict[str, Any]:
        if not self.sasl_mechanism:
            raise self._error(
                "sasl_mechanism",
                f"required with {self.prefix}security_protocol {self.security_protocol} "
                f"({', '.join(SASL_MECHANISMS)})",
            )
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise self._error(
                "sasl_mechanism", f"must be one of {', '.join(SASL_MECHANISMS)} (got {self.sasl_mechanism!r})"
            )
        if not self.sasl_username:
            raise self._error("sasl_username", f"required with {self.prefix}sasl_mechanism {self.sasl_mechanism}")
        return {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.password(),
        }

    def password(self) -> str:
        """The SASL password: ``sasl_password``, or the content of ``sasl_password_file`` (read now,
        one trailing line break removed, as files written by tools and Secret volumes often end)."""
        if self.sasl_password and self.sasl_password_file:
            raise self._error(
                "sasl_password_file", f"set together with {self.prefix}sasl_password: give the password one way"
            )
        if self.sasl_password_file:
            self._readable("sasl_password_file")
            try:
                text = Path(self.sasl_password_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise self._error("sasl_password_file", f"cannot read {self.sasl_password_file} ({exc})") from None
            text = text.removesuffix("\n").removesuffix("\r")
            if not text:
                raise self._error("sasl_password_file", f"{self.sasl_password_file} is empty")
            return text
        if not self.sasl_password:
            raise self._error(
                "sasl_password", f"required with {self.prefix}sasl_mechanism (or {self.prefix}sasl_password_file)"
            )
        return self.sasl_password

    def _pem(self, key: str, what: str) -> None:
        """The file of ``key`` is readable and holds a PEM ``what`` ("certificate", "private key"):
        checked one file at a time, so the error names the file that is wrong."""
        self._readable(key)
        data = Path(getattr(self, key)).read_bytes()
        marker = b"-----BEGIN CERTIFICATE-----" if what == "certificate" else b"PRIVATE KEY-----"
        if marker not in data:
            hint = f" (set {self.prefix}ssl_key_file)" if key == "ssl_cert_file" and what != "certificate" else ""
            raise self._error(key, f"{getattr(self, key)} holds no PEM {what}{hint}")
        if b"ENCRYPTED" in data and what != "certificate":
            raise self._error(key, f"{getattr(self, key)} holds an encrypted private key: give it unencrypted")

    def _readable(self, key: str) -> None:
        path = Path(getattr(self, key))
        if not path.is_file():
            raise self._error(key, f"file not found: {path}")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise self._error(key, f"cannot read {path} ({exc.strerror or exc})") from None


FailureKind = Literal["tls", "authentication", "unavailable"]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def classify_connection_error(exc: BaseException, sasl_mechanism: str | None = None) -> tuple[FailureKind, str]:
    """Why a connection to a broker failed, in plain words: ``("tls", ...)`` for a refused
    certificate or a port that does not speak TLS, ``("authentication", ...)`` for refused SASL
    credentials, else ``("unavailable", ...)``."""
    from aiokafka.errors import (
        IllegalSaslStateError,
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", f"TLS: the broker's certificate was refused ({exc.verify_message or _describe(exc)})"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake with the broker failed ({_describe(exc)}); does the port speak TLS?"
    if isinstance(exc, (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError)):
        return "authentication", f"SASL {sasl_mechanism} authentication refused by the broker ({_describe(exc)})"
    if sasl_mechanism and not isinstance(exc, (OSError, asyncio.TimeoutError, KafkaError)):
        # aiokafka's SCRAM exchange fails with KeyError/ValueError when the broker answers with an
        # error (unknown user, wrong password: "e=...") or with a wrong server signature.
        return "authentication", (
            f"SASL {sasl_mechanism} authentication failed: the broker refused the user name or password"
            f" ({_describe(exc)})"
        )
    return "unavailable", f"cannot reach the brokers: {_describe(exc)}"


async def explain_bootstrap_failure(
    exc: BaseException,
    brokers: Sequence[str],
    options: Mapping[str, Any],
    *,
    client_id: str = "k1s0-eventstore",
    request_timeout_ms: int = 10_000,
) -> tuple[FailureKind, str]:
    """``classify_connection_error`` for a failed client start. aiokafka's bootstrap only logs why
    each host failed and raises "Unable to bootstrap": one direct connection to the first broker
    with the same ``options`` recovers the real cause (certificate, credentials, refused port)."""
    from aiokafka.conn import collect_hosts, create_conn
    from aiokafka.errors import KafkaError

    cause = exc
    hosts = collect_hosts(list(brokers), randomize=False) if brokers else []
    if isinstance(exc, KafkaError) and hosts:
        host, port, _ = hosts[0]
        try:
            conn = await create_conn(host, port, client_id=client_id, request_timeout_ms=request_timeout_ms, **options)
        except Exception as probe:
            cause = probe
        else:
            conn.close()
    return classify_connection_error(cause, options.get("sasl_mechanism"))


__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "FailureKind",
    "KafkaSecurity",
    "KafkaSecurityError",
    "classify_connection_error",
    "explain_bootstrap_failure",
]
