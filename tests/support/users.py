"""Real users of the test cluster: client certificates its CA signs.

The certificate comes through the cluster's own CertificateSigningRequest API (signer
``kubernetes.io/kube-apiserver-client``, approved by the admin), as a cluster admin hands
one to a person, so it works the same on the built-in cluster and on kind. The API server
authenticates the certificate's CN as the user name and its O as the groups, exactly as
it does for people in a real cluster: no impersonation, no admin.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class User:
    name: str
    kubeconfig: Path

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def make_user(cluster: Any, name: str, directory: Path, groups: tuple[str, ...] = ()) -> User:
    """A client certificate for ``name`` signed by the cluster's CA, and a kubeconfig."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    subject = "".join(f"/O={g}" for g in groups) + f"/CN={name}"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)],
        check=True,
        capture_output=True,
    )
    crt.write_bytes(_signed(cluster, name, csr.read_bytes()))
    ca = cluster.run_kubectl(
        "config", "view", "--raw", "--flatten", "--minify",
        "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ).stdout.strip()  # fmt: skip
    server = _server(Path(cluster.kubeconfig))
    kubeconfig = directory / f"{name}.kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{certificate-authority-data: {ca}, server: "{server}"}}
users:
- name: {name}
  user: {{client-certificate: {crt}, client-key: {key}}}
contexts:
- name: test
  context: {{cluster: test, user: {name}}}
current-context: test
"""
    )
    return User(name, kubeconfig)


def _signed(cluster: Any, name: str, csr_pem: bytes, timeout: float = 60) -> bytes:
    """The certificate the cluster's client signer issues for ``csr_pem``."""
    request = f"user-{name}-{uuid.uuid4().hex[:8]}"
    manifest = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": request},
        "spec": {
            "request": base64.b64encode(csr_pem).decode(),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "expirationSeconds": 86400,
            "usages": ["client auth"],
        },
    }
    subprocess.run(
        [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), "create", "-f", "-"],
        input=json.dumps(manifest), text=True, check=True, capture_output=True,
    )  # fmt: skip
    try:
        cluster.run_kubectl("certificate", "approve", request)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            issued = cluster.run_kubectl(
                "get", "csr", request, "-o", "jsonpath={.status.certificate}"
            ).stdout.strip()
            if issued:
                return base64.b64decode(issued)
            time.sleep(0.5)
        raise TimeoutError(f"the cluster signed no certificate for {name} within {timeout}s")
    finally:
        cluster.run_kubectl("delete", "csr", request, "--ignore-not-found", check=False)


def _server(kubeconfig: Path) -> str:
    for line in kubeconfig.read_text().splitlines():
        if line.strip().startswith("server:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"no server in {kubeconfig}")
