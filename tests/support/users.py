"""Real users of the test cluster: client certificates signed by its CA.

The API server authenticates the certificate's CN as the user name and its O as the
groups, exactly as it does for people in a real cluster: no impersonation, no admin.
"""

from __future__ import annotations

import subprocess
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
    pki = Path(cluster.kubeconfig).parent / "pki"
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    subject = "".join(f"/O={g}" for g in groups) + f"/CN={name}"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "1",
            "-out", str(crt),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = _server(Path(cluster.kubeconfig))
    kubeconfig = directory / f"{name}.kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{certificate-authority: {pki / "ca.crt"}, server: "{server}"}}
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


def _server(kubeconfig: Path) -> str:
    for line in kubeconfig.read_text().splitlines():
        if line.strip().startswith("server:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"no server in {kubeconfig}")
