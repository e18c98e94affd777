"""The operator's Kafka TLS/SASL settings: never copied into a sidecar's ConfigMap, and a setting that
went bad reported on the EventStream like an outage, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k1s0_event_store import KafkaSecurity
from k1s0_event_store.sidecar_config import load_config, to_yaml
from k1s0_operator import _kafka
from k1s0_operator._resources import sidecar_config
from k1s0_operator._spec import parse_spec
from tests.support.tls import TestCA


def test_sidecar_config_keeps_the_protocol_but_none_of_the_operators_credentials(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    base = load_config(env={
        "EVENTSTORE_AUTH_MODE": "none", "EVENTSTORE_KAFKA_BROKERS": "kafka-0:9093",
        "EVENTSTORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "EVENTSTORE_KAFKA_SSL_CA_FILE": str(ca.cert_file),
        "EVENTSTORE_KAFKA_SSL_CHECK_HOSTNAME": "false", "EVENTSTORE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "EVENTSTORE_KAFKA_SASL_USERNAME": "operator", "EVENTSTORE_KAFKA_SASL_PASSWORD": "operator-inline",
    })
    text = to_yaml(sidecar_config(base, parse_spec("shop", "orders", {})))
    kafka = yaml.safe_load(text)["kafka"]
    assert (kafka["security_protocol"], kafka["sasl_mechanism"], kafka["ssl_check_hostname"]) == (
        "SASL_SSL", "SCRAM-SHA-256", False
    )
    assert "operator-inline" not in text and "operator" not in (kafka["sasl_username"] or "")
    assert not any(kafka[k] for k in ("sasl_password", "sasl_password_file", "ssl_ca_file", "ssl_cert_file",
                                      "ssl_key_file"))


async def test_admin_with_a_setting_gone_bad_is_unavailable_naming_the_key(tmp_path: Path) -> None:
    security = KafkaSecurity(security_protocol="SSL", ssl_ca_file=str(tmp_path / "deleted-ca.pem"))
    with pytest.raises(_kafka.BrokerUnavailable, match=r"^Kafka settings: kafka\.ssl_ca_file: file not found"):
        async with _kafka.Admin(["127.0.0.1:9"], security):
            pass
