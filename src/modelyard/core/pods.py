"""The pieces every modelyard pod is made of.

The operator's builders (model servers, drift CronJobs, routers) and the pipeline
renderer take them from here; the chart's ``_helpers.tpl`` says the same in Helm and a
test compares the two.
"""

from __future__ import annotations

from typing import Any

from modelyard.core import contracts as c


def restricted_pod_security_context() -> dict[str, Any]:
    """The pod half of the Pod Security "restricted" profile, as the named user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": c.RUN_AS_UID,
        "runAsGroup": c.RUN_AS_UID,
        "fsGroup": c.RUN_AS_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security_context() -> dict[str, Any]:
    """The container half: no privilege escalation, no capabilities, read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def app_labels(name: str, instance: str, component: str) -> dict[str, str]:
    """The ``app.kubernetes.io`` labels of an object modelyard creates."""
    return {
        c.LABEL_NAME: name,
        c.LABEL_INSTANCE: instance,
        c.LABEL_COMPONENT: component,
        c.LABEL_PART_OF: c.PART_OF,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
    }


#: The root filesystem is read-only; ``/tmp`` (an emptyDir) is the one writable place.
TMP_VOLUME_NAME = "tmp"


def tmp_volume(size_limit: str | None = None) -> dict[str, Any]:
    empty_dir: dict[str, Any] = {"sizeLimit": size_limit} if size_limit else {}
    return {"name": TMP_VOLUME_NAME, "emptyDir": empty_dir}


def tmp_mount() -> dict[str, Any]:
    return {"name": TMP_VOLUME_NAME, "mountPath": "/tmp"}


def home_env() -> list[dict[str, Any]]:
    """HOME and TMPDIR on the writable ``/tmp``."""
    return [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}]


def credential_env(secret_name: str) -> list[dict[str, Any]]:
    """The registry credentials from a Secret, under the names MLflow reads; each key is
    optional (a Secret holds a user name and password, or a token)."""
    return [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key, "optional": True}},
        }
        for key in c.CREDENTIAL_KEYS
    ]
