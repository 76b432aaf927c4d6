"""The operator keeps its CRDs at its own version (``MODELYARD_MANAGE_CRDS``).

Helm installs the CRDs in a chart's ``crds/`` once and never upgrades them, so a release
that changes the ModelDeployment schema would otherwise need a manual ``kubectl apply``.
With this setting on (the chart's default), the operator applies the CRDs it was built
with when it starts, server-side, as field manager ``modelyard-operator``:

- only CRDs that exist (the chart, ``kubectl apply -k manifests/`` or a GitOps tool
  created them; the operator may patch its two CRDs by name and create none);
- only forward: a CRD that an operator of a newer version applied is left alone, so an
  old replica during a rolling upgrade cannot take the schema back;
- only when something changed (a digest of the definition in an annotation).

The definitions are byte-identical copies of ``manifests/crds`` (a test checks).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from packaging.version import InvalidVersion, Version

from modelyard._version import __version__
from modelyard.operator.resource import GROUP

logger = logging.getLogger(__name__)

FIELD_MANAGER = "modelyard-operator"
VERSION_ANNOTATION = f"{GROUP}/operator-version"
DIGEST_ANNOTATION = f"{GROUP}/definition-digest"


@dataclass(frozen=True)
class Outcome:
    name: str
    action: str  # "applied", "current", "newer", "missing"
    message: str


def embedded() -> list[tuple[dict[str, Any], str]]:
    """The CRDs this operator was built with, each with the digest of its file."""
    found = []
    folder = resources.files("modelyard.operator") / "crds"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            text = entry.read_bytes()
            found.append((yaml.safe_load(text), hashlib.sha256(text).hexdigest()[:16]))
    return found


def _version(text: str | None) -> Version | None:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


def ensure_crds(
    api_client: client.ApiClient,
    version: str = __version__,
    definitions: list[tuple[dict[str, Any], str]] | None = None,
) -> list[Outcome]:
    """Apply the embedded CRDs (or ``definitions``) where that moves them forward; what
    happened to each."""
    api = client.ApiextensionsV1Api(api_client)
    ours = Version(version)
    outcomes = []
    for crd, digest in embedded() if definitions is None else definitions:
        name = crd["metadata"]["name"]
        try:
            live = api.read_custom_resource_definition(name)
        except ApiException as error:
            if error.status == 404:
                outcomes.append(
                    Outcome(name, "missing", f"CRD {name} is not installed: apply manifests/crds")
                )
                continue
            raise
        annotations = (live.metadata.annotations if live.metadata else None) or {}
        theirs = _version(annotations.get(VERSION_ANNOTATION))
        if theirs is not None and theirs > ours:
            outcomes.append(
                Outcome(name, "newer", f"CRD {name} is from operator {theirs}, newer than {ours}")
            )
            continue
        if theirs == ours and annotations.get(DIGEST_ANNOTATION) == digest:
            outcomes.append(Outcome(name, "current", f"CRD {name} is current"))
            continue
        body = dict(crd)
        body["metadata"] = {
            **crd["metadata"],
            "annotations": {
                **(crd["metadata"].get("annotations") or {}),
                VERSION_ANNOTATION: str(ours),
                DIGEST_ANNOTATION: digest,
            },
        }
        api.patch_custom_resource_definition(
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        outcomes.append(Outcome(name, "applied", f"CRD {name} applied at operator {ours}"))
    return outcomes
