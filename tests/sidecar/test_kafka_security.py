"""Kafka TLS/SASL settings: YAML and EVENTSTORE_KAFKA_* variables, and start-up errors that name the key."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from k1s0_event_store import KafkaSecurity, KafkaSecurityError
from k1s0_event_store.sidecar_config import ConfigError, load_config
from tests.support.tls import TestCA

BASE = {"EVENTSTORE_AUTH_MODE": "none", "EVENTSTORE_KAFKA_BROKERS": "kafka-0:9093"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = TestCA(directory)
    client_cert, client_key = ca.issue("client", ["client.test"], client=True)
    _, other_key = ca.issue("other", ["other.test"], client=True)
    garbage = directory / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {"ca": ca.cert_file, "cert": client_cert, "key": client_key, "other_key": other_key, "garbage": garbage}


def load(**env: str) -> object:
    return load_config(env={**BASE, **{f"EVENTSTORE_KAFKA_{k.upper()}": v for k, v in env.items()}})


def test_every_key_comes_from_the_environment(pki: dict[str, Path], tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config = load_config(env={
        **BASE,
        "EVENTSTORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "EVENTSTORE_KAFKA_SSL_CA_FILE": str(pki["ca"]),
        "EVENTSTORE_KAFKA_SSL_CERT_FILE": str(pki["cert"]),
        "EVENTSTORE_KAFKA_SSL_KEY_FILE": str(pki["key"]),
        "EVENTSTORE_KAFKA_SSL_CHECK_HOSTNAME": "false",
        "EVENTSTORE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "EVENTSTORE_KAFKA_SASL_USERNAME": "event-store",
        "EVENTSTORE_KAFKA_SASL_PASSWORD_FILE": str(secret),
    })
    options = config.kafka.security.client_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "event-store", "sasl_plain_password": "s3cret",  # trailing line break removed
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False


def test_yaml_keys_and_safe_defaults(pki: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "auth: {mode: none}\n"
        "kafka:\n  brokers: [kafka-0:9093]\n  security_protocol: SSL\n"
        f"  ssl_ca_file: {pki['ca']}\n"
    )
    config = load_config(path, env={})
    context = config.kafka.security.client_options()["ssl_context"]
    # Hostname checking and certificate verification are on unless switched off explicitly.
    assert context.check_hostname is True and context.verify_mode == ssl.CERT_REQUIRED
    assert load_config(env={"EVENTSTORE_AUTH_MODE": "none"}).kafka.security.client_options() == {
        "security_protocol": "PLAINTEXT"
    }


def test_the_password_is_not_in_the_config_repr() -> None:
    config = load(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                  sasl_password="hunter2-secret")
    assert "hunter2-secret" not in repr(config)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"security_protocol": "TLS"},
         "kafka.security_protocol: must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_ca_file": "/nonexistent/ca.pem"},
         "kafka.ssl_ca_file: file not found: /nonexistent/ca.pem"),
        ({"security_protocol": "SSL", "ssl_ca_file": "@garbage"}, "kafka.ssl_ca_file: "),
        ({"security_protocol": "SSL", "ssl_key_file": "@key"}, "kafka.ssl_cert_file: required when kafka.ssl_key_file"),
        ({"security_protocol": "SSL", "ssl_cert_file": "@cert", "ssl_key_file": "@other_key"},
         "kafka.ssl_key_file: "),
        ({"security_protocol": "SSL", "ssl_cert_file": "/nonexistent/c.pem"}, "kafka.ssl_cert_file: file not found"),
        ({"ssl_ca_file": "@ca"}, "kafka.ssl_ca_file: is set, but kafka.security_protocol is PLAINTEXT"),
        ({"security_protocol": "SASL_SSL"}, "kafka.sasl_mechanism: required with kafka.security_protocol SASL_SSL"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "kafka.sasl_mechanism: must be one of PLAIN"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
         "kafka.sasl_username: required with kafka.sasl_mechanism SCRAM-SHA-256"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
         "kafka.sasl_password: required"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
          "sasl_password": "p", "sasl_password_file": "@ca"}, "kafka.sasl_password_file: set together"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
          "sasl_password_file": "/nonexistent/pw"}, "kafka.sasl_password_file: file not found"),
        ({"security_protocol": "SSL", "sasl_mechanism": "PLAIN"},
         "kafka.sasl_mechanism: is set, but kafka.security_protocol is SSL"),
    ],
)
def test_start_up_refuses_a_bad_setting_naming_its_key(
    pki: dict[str, Path], env: dict[str, str], message: str
) -> None:
    resolved = {k: str(pki[v[1:]]) if v.startswith("@") else v for k, v in env.items()}
    with pytest.raises(ConfigError) as caught:
        load(**resolved)
    assert str(caught.value).startswith(message), str(caught.value)


def test_settings_are_not_checked_while_kafka_is_off() -> None:
    config = load_config(env={"EVENTSTORE_AUTH_MODE": "none", "EVENTSTORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    assert config.kafka.brokers == []


def test_an_empty_password_file_is_refused_and_a_rotated_one_is_read_again(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("")
    security = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                             sasl_password_file=str(secret), prefix="")
    with pytest.raises(KafkaSecurityError, match=r"^sasl_password_file: .* is empty") as caught:
        security.validate()
    assert caught.value.key == "sasl_password_file"
    secret.write_text("first")
    assert security.client_options()["sasl_plain_password"] == "first"
    secret.write_text("second\r\n")
    assert security.client_options()["sasl_plain_password"] == "second"
