"""``k1s0-eventstore operator``: the flags and the configuration errors it reports before starting."""

from __future__ import annotations

import pytest

from k1s0_sidecar.cli import build_parser, main


def test_flags_parse() -> None:
    args = build_parser().parse_args(["operator", "--namespace", "a", "--namespace", "b", "--config", "c.yaml"])
    assert args.namespace == ["a", "b"] and not args.all_namespaces and args.config == "c.yaml"
    args = build_parser().parse_args(["operator", "--all-namespaces"])
    assert args.all_namespaces and args.namespace == []


def test_a_scope_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator"]) == 2
    assert "--namespace" in capsys.readouterr().err


def test_the_admin_dsn_is_required(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EVENTSTORE_DATABASE_URL", raising=False)
    monkeypatch.setenv("EVENTSTORE_AUTH_MODE", "none")
    assert main(["operator", "--namespace", "x"]) == 2
    assert "EVENTSTORE_DATABASE_URL" in capsys.readouterr().err


def test_the_sidecars_auth_must_be_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", "postgresql://admin:pw@db:5432/k1s0")
    monkeypatch.delenv("EVENTSTORE_AUTH_MODE", raising=False)
    monkeypatch.delenv("EVENTSTORE_AUTH_JWKS_URL", raising=False)
    assert main(["operator", "--namespace", "x"]) == 2
    err = capsys.readouterr().err
    assert "auth.jwks_url" in err
    assert "pw" not in err
