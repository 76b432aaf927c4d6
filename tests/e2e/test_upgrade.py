"""Upgrade from the previous release to this tree, under traffic.

The previous release is a pinned older commit (there are no tags yet): the last one the
project's CI landed, at an older version. Its tree is exported once (``git archive``,
fetching the commit first in a shallow clone) under ``$MODELYARD_CACHE/previous/``, and
its own ``hack/images.sh`` builds and loads its images
(cached by their inputs' hash, as ours are; with the same locks only the source layers
differ). The cluster is first put back as that release left it: its CRDs, at its schema.

Then, as a platform team would: the previous chart installed, models registered, two
ModelDeployments serving with a client on each; ``helm upgrade`` to this tree's chart
while the clients run. What must hold: no request failed, each ModelDeployment Ready at
the version it served before, now on the new server image; the registry as it was
(versions, aliases, tags); the CRDs at the new schema, applied by the new operator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelyard._version import __version__
from tests.e2e.conftest import LOCAL_IMAGES, wait_available
from tests.e2e.test_product import md, mlflow_client, ready_version
from tests.support import load
from tests.support.incluster import E2E_RELEASE as RELEASE
from tests.support.kube import wait_for
from tests.support.models import register_sklearn_model, small_frame
from tests.support.servers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.node_only, pytest.mark.timeout(2400)]

#: The previous release: the commit of the last landed submission (version 0.1.0).
PREVIOUS = os.environ.get("MODELYARD_PREVIOUS_RELEASE", "e5c21067c2d1999e2cd5bd14c6327098ce7e84be")
MODEL = "scorer"
#: name -> the spec.model of each ModelDeployment: one follows an alias, one is pinned.
DEPLOYMENTS = {
    MODEL: {"name": MODEL, "alias": "champion"},
    f"{MODEL}-pinned": {"name": MODEL, "version": 1},
}
#: Each client's requests per second (the upgrade must not fail one of them).
RATE = float(os.environ.get("MODELYARD_E2E_UPGRADE_RATE", "10"))
CRD_VERSION_ANNOTATION = "modelyard.io/operator-version"
CRD_DIGEST_ANNOTATION = "modelyard.io/definition-digest"
BODY = json.dumps({"dataframe_split": {"columns": ["a", "b", "c"], "data": [[0.2, -0.3, 0.1]]}})


@dataclass(frozen=True)
class Previous:
    tree: Path
    version: str
    commit: str


def cache_dir() -> Path:
    return Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))


def git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def has_commit(commit: str) -> bool:
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    return found.returncode == 0


def previous_tree() -> Path:
    """The previous release's tree at PREVIOUS (a repository of its own, as images.sh
    hashes tracked files), made once."""
    tree = cache_dir() / "previous" / PREVIOUS[:12]
    marker = tree / ".git" / "modelyard-previous"
    if marker.exists() and marker.read_text() == PREVIOUS:
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    if not has_commit(PREVIOUS):  # a shallow clone: fetch the commit, else the history
        for fetch in (
            ["fetch", "--quiet", "origin", PREVIOUS],
            ["fetch", "--quiet", "--unshallow"],
        ):
            subprocess.run(["git", *fetch], cwd=REPO, capture_output=True, check=False, timeout=600)
            if has_commit(PREVIOUS):
                break
        else:
            pytest.fail(f"the previous release's commit {PREVIOUS} is not in this clone", False)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", PREVIOUS],
        cwd=REPO, capture_output=True, check=True, timeout=600,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=600)
    git("init", "--quiet", cwd=tree)
    git("add", "--all", cwd=tree)
    who = ["-c", "user.name=modelyard", "-c", "user.email=e2e@modelyard.invalid"]
    git(*who, "commit", "--quiet", "--no-verify", "-m", f"release {PREVIOUS}", cwd=tree)
    marker.write_text(PREVIOUS)
    return tree


def kubectl_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.run_kubectl(*args, "-o", "json").stdout)


def crds_as_released(cluster: Any, tree: Path) -> list[str]:
    """Put the CRDs back to the previous release's schema, as that release left them
    (another module's operator of this tree may have moved them forward)."""
    import yaml

    names = []
    for path in sorted((tree / "manifests" / "crds").glob("*.yaml")):
        old = yaml.safe_load(path.read_text())
        name = old["metadata"]["name"]
        names.append(name)
        found = cluster.run_kubectl("get", "crd", name, "-o", "json", check=False)
        if found.returncode != 0:  # no release of this tree ran before on this cluster
            cluster.run_kubectl("create", "-f", str(path))
            continue
        live = json.loads(found.stdout)
        live["spec"] = old["spec"]
        annotations = dict(live["metadata"].get("annotations") or {})
        for key in (CRD_VERSION_ANNOTATION, CRD_DIGEST_ANNOTATION):
            annotations.pop(key, None)
        live["metadata"]["annotations"] = annotations
        live.pop("status", None)
        subprocess.run(
            [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), "replace", "-f", "-"],
            input=json.dumps(live), text=True, capture_output=True, check=True, timeout=120,
        )  # fmt: skip
    return names


def crd_state(cluster: Any, name: str) -> tuple[str | None, set[str]]:
    """The operator version a CRD was applied by, and the canary analysis's fields."""
    crd = kubectl_json(cluster, "get", "crd", name)
    version = (crd["metadata"].get("annotations") or {}).get(CRD_VERSION_ANNOTATION)
    if name != "modeldeployments.modelyard.io":
        return version, set()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    analysis = schema["properties"]["spec"]["properties"]["rollout"]["properties"]["canary"][
        "properties"
    ]["analysis"]["properties"]
    return version, set(analysis)


@pytest.fixture(scope="module")
def previous(node_cluster: Any) -> Previous:
    """The previous release's tree, its images built and loaded into the node."""
    tree = previous_tree()
    text = (tree / "src" / "modelyard" / "_version.py").read_text()
    version = text.split('__version__ = "', 1)[1].split('"', 1)[0]
    assert version != __version__, f"the previous release has this tree's version {version}"
    images = subprocess.run(
        [str(tree / "hack" / "images.sh")],
        env={**os.environ, "CLUSTER_DIR": str(REPO / ".cluster")},
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    if images.returncode != 0:
        pytest.fail(f"the previous release's images:\n{images.stderr[-6000:]}", pytrace=False)
    return Previous(tree, version, PREVIOUS)


def helm(cluster: Any, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bin_dir / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip


def values(ns: str) -> list[str]:
    """The settings a user keeps in a values file, passed at install and at upgrade."""
    return [
        *LOCAL_IMAGES,
        "--set", "operator.resolveInterval=3",
        "--set", "pipelines.suspend=true",
        # Only its own namespace: another module's operator may still be stopping.
        "--set", f"operator.watchNamespaces={{{ns}}}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def installed(node_cluster: Any, previous: Previous) -> Iterator[str]:
    """The previous release's chart installed, as that release left the cluster."""
    ns = f"upg-{uuid.uuid4().hex[:6]}"
    node_cluster.run_kubectl("create", "namespace", ns)
    node_cluster.run_kubectl(
        "label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted"
    )
    crds = crds_as_released(node_cluster, previous.tree)
    done = helm(
        node_cluster, "install", RELEASE, str(previous.tree / "charts" / "modelyard"),
        "-n", ns, *values(ns),
    )  # fmt: skip
    available = wait_available(node_cluster, ns, check=False)
    if done.returncode != 0 or available.returncode != 0:
        pods = node_cluster.run_kubectl("-n", ns, "get", "pods,events", check=False).stdout
        pytest.fail(f"{done.stderr}\n{available.stderr}\n{pods}", pytrace=False)
    # Its operator applies its own CRDs when it starts (they carried no version).
    for name in crds:

        def applied(name: str = name) -> bool:
            return crd_state(node_cluster, name)[0] == previous.version

        wait_for(f"{name} applied by operator {previous.version}", applied, timeout=120)
    yield ns
    for name in DEPLOYMENTS:
        node_cluster.run_kubectl(
            "-n", ns, "delete", "md", name, "--wait=true", "--timeout=180s",
            check=False, timeout=240,
        )  # fmt: skip
    helm(node_cluster, "uninstall", RELEASE, "-n", ns, "--wait", timeout=300)
    node_cluster.run_kubectl("delete", "namespace", ns, "--wait=false", check=False)


def registry_state(client: Any) -> dict[str, Any]:
    """What a user registered: every model's aliases, tags and versions."""
    state: dict[str, Any] = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name='{model.name}'")
        state[model.name] = {
            "aliases": dict(model.aliases),
            "tags": dict(model.tags),
            "description": model.description,
            "versions": {
                v.version: {
                    "run_id": v.run_id,
                    "source": v.source,
                    "status": v.status,
                    "tags": dict(v.tags),
                }
                for v in versions
            },
        }
    return state


def serving_image(cluster: Any, ns: str, name: str) -> str | None:
    """The server image of ``name``'s Deployment once every replica runs it, else None."""
    found = cluster.run_kubectl("-n", ns, "get", "deploy", name, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    deploy = json.loads(found.stdout)
    status = deploy.get("status") or {}
    want = deploy["spec"].get("replicas", 1)
    rolled = (
        status.get("observedGeneration") == deploy["metadata"]["generation"]
        and status.get("updatedReplicas") == want
        and status.get("availableReplicas") == want
        and status.get("replicas") == want
    )
    return str(deploy["spec"]["template"]["spec"]["containers"][0]["image"]) if rolled else None


def serves(cluster: Any, ns: str, name: str, image: str) -> Callable[[], bool]:
    """Whether ModelDeployment ``name`` is Ready at version 1, every replica on ``image``."""
    return lambda: (
        ready_version(md(cluster, ns, name)) == 1 and serving_image(cluster, ns, name) == image
    )


def test_upgrade_from_the_previous_release_fails_no_request_and_keeps_the_registry(
    node_cluster: Any, previous: Previous, installed: str
) -> None:
    ns = installed
    from sklearn.linear_model import LogisticRegression

    with mlflow_client(node_cluster, ns) as (client, uri):
        frame, label = small_frame(seed=7)
        registered = register_sklearn_model(
            uri, LogisticRegression(), frame, name=MODEL, label=label, alias="champion"
        )
        assert registered.version == "1"
        client.set_registered_model_alias(MODEL, "stable", "1")
        client.set_registered_model_tag(MODEL, "team", "risk")
        client.set_model_version_tag(MODEL, "1", "validated-by", "upgrade-test")
        client.update_registered_model(MODEL, description="scores before and after")
        # Registered by a person: the operator may tag its versions once granted.
        granted = subprocess.run(
            [str(Path(sys.executable).parent / "modelyard"), "registry", "grant", MODEL,
             "--tracking-uri", uri],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert granted.returncode == 0, granted.stdout + granted.stderr
    for name, model in DEPLOYMENTS.items():
        manifest = {
            "apiVersion": "modelyard.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": model},
        }
        subprocess.run(
            [node_cluster.kubectl, "--kubeconfig", str(node_cluster.kubeconfig), "-n", ns,
             "apply", "-f", "-"],
            input=json.dumps(manifest), text=True, check=True, capture_output=True,
        )  # fmt: skip
    for name in DEPLOYMENTS:
        wait_for(
            f"md/{name} Ready at version 1 on the previous server image",
            serves(node_cluster, ns, name, f"modelyard/server:{previous.version}"),
            timeout=600,
            interval=3,
        )
    with mlflow_client(node_cluster, ns) as (client, _):
        before = registry_state(client)

    clients = {
        name: load.Client(
            node_cluster,
            ns,
            image=load.toolkit(),
            url=f"http://{name}.{ns}.svc.cluster.local/invocations",
            good=BODY,
            rate=RATE,
            threads=2,
        )  # fmt: skip
        for name in DEPLOYMENTS
    }
    time.sleep(5)  # answered by the previous release first
    began = time.time()
    upgraded = helm(
        node_cluster, "upgrade", RELEASE, str(REPO / "charts" / "modelyard"), "-n", ns,
        *values(ns),
    )  # fmt: skip
    logs: dict[str, load.ClientLog] = {}
    try:
        assert upgraded.returncode == 0, upgraded.stderr
        for component in ("operator", "mlflow"):
            rolled = node_cluster.run_kubectl(
                "-n", ns, "rollout", "status", f"deploy/{RELEASE}-modelyard-{component}",
                "--timeout=600s", check=False, timeout=660,
            )  # fmt: skip
            assert rolled.returncode == 0, rolled.stderr
        for name in DEPLOYMENTS:
            wait_for(
                f"md/{name} Ready at version 1 on the new server image",
                serves(node_cluster, ns, name, f"modelyard/server:{__version__}"),
                timeout=600,
                interval=2,
            )
        ended = time.time()
        time.sleep(5)  # answered by the new release after
    finally:
        for name, running in clients.items():
            logs[name] = running.stop()

    report = []
    for name, log in logs.items():
        failed = log.failed()
        assert not failed, f"{name}: {len(failed)} failed of {len(log.answers)}: {failed[:10]}"
        during = log.within(began, ended)
        assert during, f"{name}: no request was sent during the upgrade"
        assert {a.version for a in log.answers} == {"1"}, {a.version for a in log.answers}
        report.append(f"{name}: {len(log.answers)} sent ({len(during)} during), 0 failed")

    with mlflow_client(node_cluster, ns) as (client, _):
        after = registry_state(client)
    assert set(after) == set(before)
    for model, was in before.items():
        now = after[model]
        assert now["aliases"] == was["aliases"], model
        assert now["description"] == was["description"], model
        assert now["tags"].items() >= was["tags"].items(), model
        assert set(now["versions"]) == set(was["versions"]), model
        for number, version in was["versions"].items():
            kept = now["versions"][number]
            assert {k: kept[k] for k in ("run_id", "source", "status")} == {
                k: version[k] for k in ("run_id", "source", "status")
            }, (model, number)
            # Nothing a user or the operator wrote is lost (the new operator may add).
            assert kept["tags"].items() >= version["tags"].items(), (model, number)

    version, analysis = crd_state(node_cluster, "modeldeployments.modelyard.io")
    assert version == __version__
    assert "minLatencyIncrease" in analysis, sorted(analysis)
    for name in DEPLOYMENTS:
        status = md(node_cluster, ns, name)["status"]
        assert status["model"]["version"] == 1, status
    print(
        f"upgraded {previous.version} ({previous.commit[:7]}) -> {__version__} in "
        f"{ended - began:.0f}s under load: "
        + "; ".join(report)
        + f"; registry: {len(before)} model(s), versions {sorted(before[MODEL]['versions'])}"
        f" and aliases {before[MODEL]['aliases']} before and after"
    )
