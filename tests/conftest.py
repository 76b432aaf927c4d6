"""Fixtures shared by every tier: the real servers the tests talk to.

- ``cluster``: the local Kubernetes control plane (``hack/cluster.sh``). A running one is
  reused; otherwise it is started and stopped again at the end of the run (with
  pytest-xdist: once, shared by the workers). If it
  cannot start, every test that needs it fails with the components' log tails.
- ``mlflow_server``: a real ``mlflow server`` process (SQLite store, proxied artifacts).
- ``s3``: a real S3-compatible server (SeaweedFS, tests/support/s3.py) with credentials;
  ``s3_mlflow_server``: an ``mlflow server`` whose artifacts are in a bucket on it.
- ``namespace``: a fresh namespace per test; on failure the test's report shows what a
  person would look at (``kubectl get all``, events).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import Postgres, running_postgres
from tests.support.s3 import S3Server, running_s3
from tests.support.servers import REPO, Cluster, MlflowServer, running_mlflow_server


# ----------------------------------------------------------------------------- cluster
def _cluster_paths() -> tuple[Path, Path, Path]:
    script = REPO / "hack" / "cluster.sh"
    cluster_dir = Path(os.environ.get("CLUSTER_DIR", REPO / ".cluster"))
    cache = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))
    return script, cluster_dir, cache


def pytest_configure(config: pytest.Config) -> None:
    # One token per run, set before pytest-xdist starts its workers (they inherit it):
    # the process that started the control plane marks it with this token, and the run's
    # main process stops it at the end, after every worker is done with it.
    os.environ.setdefault("MODELYARD_TEST_RUN", uuid.uuid4().hex)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the main process decides
    script, cluster_dir, _ = _cluster_paths()
    marker = cluster_dir / "started-by-test-run"
    if marker.is_file() and marker.read_text() == os.environ["MODELYARD_TEST_RUN"]:
        marker.unlink()
        if not os.environ.get("MODELYARD_KEEP_CLUSTER"):
            subprocess.run([str(script), "down"], check=False)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The control plane, started once per run: several pytest-xdist workers take a lock,
    the first starts it, the others find it up."""
    script, cluster_dir, cache = _cluster_paths()
    cluster_dir.mkdir(parents=True, exist_ok=True)
    with (cluster_dir / "test-run.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run([str(script), "status"], check=False).returncode != 0:
            up = subprocess.run([str(script), "up"], capture_output=True, text=True, check=False)
            if up.returncode != 0:
                pytest.fail(
                    "the local Kubernetes control plane did not start (hack/cluster.sh up):\n"
                    + up.stderr[-6000:],
                    pytrace=False,
                )
            (cluster_dir / "started-by-test-run").write_text(os.environ["MODELYARD_TEST_RUN"])
    return Cluster(kubeconfig=cluster_dir / "kubeconfig", bin_dir=cache / "bin")


@pytest.fixture(scope="session")
def api_client(cluster: Cluster) -> Iterator[object]:
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    item.stash.setdefault(_failed_key, False)
    if report.failed:
        item.stash[_failed_key] = True
    return report


_failed_key = pytest.StashKey[bool]()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.run_kubectl("create", "namespace", name)
    yield name
    if request.node.stash.get(_failed_key, False):
        for what in (["get", "all,md,events", "-o", "wide"],):
            out = cluster.run_kubectl("-n", name, *what, check=False)
            sys.stderr.write(f"\n--- kubectl -n {name} {' '.join(what)}\n{out.stdout}{out.stderr}")
    cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


# ------------------------------------------------------------------------------ mlflow
@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


# ---------------------------------------------------------------------------- postgres
@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server of the session's own (ingestion sources, tuning studies)."""
    with running_postgres() as server:
        yield server


# -------------------------------------------------------------------------------- s3
@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A SeaweedFS S3 server of the session's own (keys required, anonymous refused)."""
    with running_s3() as server:
        yield server


@pytest.fixture(scope="session")
def s3_mlflow_server(
    s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """``mlflow server`` as the chart runs it with mlflow.artifacts.s3: artifacts in the
    bucket ``mlflow`` (prefix ``artifacts``), proxied to clients (mlflow-artifacts:), with
    the keys and endpoint in its environment only."""
    s3.create_bucket("mlflow")
    with running_mlflow_server(
        tmp_path_factory.mktemp("mlflow-s3"),
        env=s3.env(),
        artifacts_destination="s3://mlflow/artifacts",
    ) as server:
        yield server


# --------------------------------------------------------------------------------- CRD
CRD_DIR = REPO / "manifests" / "crds"


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Path:
    """The CRDs from manifests/crds (the ones the chart ships), applied and Established;
    the ModelDeployment CRD's path."""
    cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    for path in sorted(CRD_DIR.glob("*.yaml")):
        cluster.run_kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{path.stem}"
        )
    return CRD_DIR / "modeldeployments.modelyard.io.yaml"


#: The approval model's cluster-wide objects in the tests carry this prefix, so that a
#: chart the tests install (the same objects, owned by Helm) does not collide with them.
APPROVAL_PREFIX = "it-"


@pytest.fixture(scope="session")
def approval_model(cluster: Cluster, crd: Path) -> str:
    """The chart's roles and admission policies of the approval model, applied; the
    prefix of their names (the ClusterRoles are PREFIX + modelyard-approver/-editor)."""
    helm = cluster.bin_dir / "helm"
    rendered = subprocess.run(
        [
            str(helm),
            "template",
            "it",
            str(REPO / "charts" / "modelyard"),
            "--show-only",
            "templates/roles.yaml",
            "--show-only",
            "templates/admission-policies.yaml",
            "--set",
            f"rbac.namePrefix={APPROVAL_PREFIX}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    subprocess.run(
        [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"],
        input=rendered,
        text=True,
        capture_output=True,
        check=True,
    )
    return APPROVAL_PREFIX
