"""kubectl v1.35 (from the same npm package as helm) applies the CRD and the examples as a dry run
against an API server's discovery (the emulator; nothing is created). The rendered chart is not
included: the emulator's discovery does not map core kinds such as ServiceAccount for kubectl.

``--validate=false``: kubectl's own validation downloads OpenAPI from the server, which the
emulator does not serve; every manifest is validated against the Kubernetes schemas by
kubernetes-validate in test_chart.py instead. What this adds: kubectl parses every document and
maps every kind to a served resource.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.deploy.conftest import CRD
from tests.deploy.tools import ROOT, KubeTools, ensure_kube_tools
from tests.support.kube import ApiServer

EVS = ("eventstore.k1s0.io", "v1", "eventstreams")


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


async def kubectl(tools: KubeTools, *args: str, stdin: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(tools.kubectl), "--kubeconfig", os.environ["KUBECONFIG"], *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_kubectl_dry_run_of_crd_and_examples(api: ApiServer, tools: KubeTools) -> None:
    assert "v1.35" in await kubectl(tools, "version", "--client")
    out = await kubectl(tools, "apply", "--dry-run=client", "--validate=false", "-f", str(CRD))
    assert "customresourcedefinition.apiextensions.k8s.io/eventstreams.eventstore.k1s0.io" in out
    examples = await asyncio.to_thread(lambda: sorted((ROOT / "crds" / "examples").glob("*.yaml")))
    out = await kubectl(tools, "apply", "--dry-run=client", "--validate=false", "-f", str(ROOT / "crds" / "examples"))
    assert out.count("(dry run)") == len(examples) >= 1
    assert api.objs(EVS) == [], "a dry run creates nothing"
