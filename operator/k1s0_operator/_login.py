"""Credentials for Kopf and for the kubernetes client, from one place.

In-cluster service-account credentials when present, otherwise the kubeconfig named by
``KUBECONFIG`` *at call time* (the kubernetes package reads that variable once, at import, which
breaks any process that sets it later), otherwise ``~/.kube/config``.
"""

from __future__ import annotations

import os
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config


def load_kubernetes_config() -> None:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)  # type: ignore[no-untyped-call]


def kubernetes_client() -> k8s.ApiClient:
    load_kubernetes_config()
    return k8s.ApiClient()


def connection_info(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Kopf's view of the same credentials (what ``kopf.login_via_client`` extracts)."""
    load_kubernetes_config()
    config: Any = k8s.Configuration.get_default_copy()
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        trust_env=settings.networking.trust_env,
    )
