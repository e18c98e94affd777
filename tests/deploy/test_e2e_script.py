"""`make e2e-kind` without kind or a Docker engine says why and exits 0 having run nothing; its
manifests are valid Kubernetes objects and the app it deploys is one the webhook injects."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from k1s0_operator.injection import STREAM_LABEL
from tests.deploy.tools import ROOT

SCRIPT = ROOT / "tests" / "e2e" / "kind.sh"
MANIFESTS = ROOT / "tests" / "e2e" / "manifests"


def run(path_dirs: list[Path]) -> subprocess.CompletedProcess[str]:
    path = ":".join([*map(str, path_dirs), "/usr/bin", "/bin"])
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp")})


def fake(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


def test_without_kind_it_skips_and_says_why(tmp_path: Path) -> None:
    if Path("/usr/bin/kind").exists() or Path("/bin/kind").exists():
        pytest.skip("kind is installed system-wide here")
    done = run([tmp_path])
    assert done.returncode == 0
    assert "SKIPPED, nothing was run: kind is not installed" in done.stdout
    assert "PASSED" not in done.stdout


def test_without_a_docker_engine_it_skips_and_says_why(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    marker = tmp_path / "kind-was-called"
    fake(bin_dir, "kind", f"touch {marker}; exit 1")
    fake(bin_dir, "docker",
         'if [ "$1" = info ]; then echo "Cannot connect to the Docker daemon" >&2; exit 1; fi; exit 0')
    done = run([bin_dir])
    assert done.returncode == 0
    assert "SKIPPED, nothing was run: no Docker engine answers" in done.stdout
    assert not marker.exists(), "no cluster was touched"


def test_manifests_are_valid_and_the_app_opts_in() -> None:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        text = path.read_text().replace("IMAGE_PLACEHOLDER", "k1s0-eventstore:e2e")
        docs += [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["apiVersion"] != "eventstore.k1s0.io/v1":
            kubernetes_validate.validate(doc, "1.35.0", strict=True)
    [app] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["namespace"] == "shop"]
    [stream] = [d for d in docs if d["kind"] == "EventStream"]
    labels = app["spec"]["template"]["metadata"]["labels"]
    assert labels[STREAM_LABEL] == stream["metadata"]["name"]
    assert stream["metadata"]["namespace"] == app["metadata"]["namespace"]
    script = SCRIPT.read_text()
    assert stream["spec"]["kafka"]["topic"] in script, "the script consumes the topic the EventStream names"
    for path in MANIFESTS.glob("*.yaml"):
        assert f"tests/e2e/manifests/{path.name}" in script
