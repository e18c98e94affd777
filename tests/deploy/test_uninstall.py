"""``helm uninstall`` cannot strand EventStreams: the chart's pre-delete hook, run as its Job runs it.

The Job's command, with the rendered arguments, against the API-server emulator that holds its
requests to the hook's own rendered RBAC: it fails, naming them, while EventStreams with the
operator's finalizer exist, and succeeds once they are gone (deleted while the operator ran,
which tests/deploy/test_rbac.py shows end to end).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from k1s0_operator import _handlers, uninstall_check
from tests.deploy.test_chart import render
from tests.deploy.test_rbac import kubeconfig_for_token
from tests.deploy.tools import KubeTools, ensure_kube_tools
from tests.operator.conftest import EVS, event_stream
from tests.support.kube import ApiServer
from tests.support.rbac import Authorizer

TOKEN = "uninstall-check-token"


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


def hook_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [job] = [d for d in docs if d["kind"] == "Job"]
    return job


async def run_job(job: dict[str, Any], kubeconfig: Path) -> tuple[int, str]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    command = [sys.executable if c == "python" else c for c in container["command"]] + container.get("args", [])
    proc = await asyncio.create_subprocess_exec(
        *command, env={"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), (out + err).decode()


async def test_pre_delete_hook_refuses_while_eventstreams_exist(
    api: ApiServer, tools: KubeTools, tmp_path: Path
) -> None:
    assert uninstall_check.FINALIZER == _handlers.FINALIZER
    docs = render(tools, {"operator": {"watchNamespaces": ["shop", "billing"]}}, tmp=tmp_path)
    job = hook_job(docs)
    hooks = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "pre-delete"]
    assert sorted(d["kind"] for d in hooks) == ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"]
    assert job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    account = job["spec"]["template"]["spec"]["serviceAccountName"]
    api.authorizers[TOKEN] = Authorizer.from_manifests(docs, "k1s0-system", account)
    kubeconfig = kubeconfig_for_token(TOKEN, tmp_path)

    for ns in ("shop", "billing", "elsewhere"):
        await api.create_namespace(ns)
    code, output = await run_job(job, kubeconfig)
    assert code == 0 and "no EventStreams left" in output, output

    await api.put_object(EVS, "shop", event_stream("orders", "shop", finalizers=[uninstall_check.FINALIZER]))
    await api.put_object(EVS, "elsewhere", event_stream("other", "elsewhere", finalizers=[uninstall_check.FINALIZER]))
    await api.put_object(EVS, "billing", event_stream("never-reconciled", "billing"))
    code, output = await run_job(job, kubeconfig)
    assert code == 1, output
    assert "shop/orders" in output and "kubectl delete eventstreams" in output
    assert "elsewhere/other" not in output, "only the watched namespaces are the release's"
    assert "never-reconciled" not in output, "no finalizer: nothing would be stranded"

    await api.patch_object(EVS, "shop", "orders", {"metadata": {"finalizers": None}})
    await api.delete_object(EVS, "shop", "orders")
    code, output = await run_job(job, kubeconfig)
    assert code == 0, output
    assert api.denied == [], api.denied


async def test_without_the_api_server_the_hook_blocks(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "nowhere"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
    }))
    code, output = await run_job({"spec": {"template": {"spec": {"containers": [
        {"command": ["python", "-m", "k1s0_operator.uninstall_check"]}]}}}}, kubeconfig)
    assert code == 2 and "cannot list EventStreams" in output
