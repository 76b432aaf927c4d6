"""The floor of benchmarks/operator_scale.py: a minimal kopf operator that watches what
the modelyard operator watches (ModelDeployments, ModelApprovals, namespaces and the
children labelled managed-by=modelyard) and does nothing else: no cache of its own, no
writes, no registry. Its memory and API requests are what any kopf operator of these
resources costs; the modelyard operator's are compared against them.

    kopf_floor.py LIVENESS_URL     (e.g. http://127.0.0.1:8089/healthz)

It imports nothing from modelyard, so that its memory is kopf's and the watches'.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import kopf

GROUP, VERSION = "modelyard.io", "v1alpha1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelyard"}


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, **_: Any) -> None:
    # The same watch settings as the modelyard operator (handlers.configure).
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING


async def _seen(**_: Any) -> None:
    """Each event is delivered to a handler, as in the real operator; nothing is done.
    A coroutine, like the operator's cache handlers: kopf runs a plain function in a
    thread pool, whose threads and their malloc arenas are not kopf's floor."""


for group_version, plural, labels in (
    (f"{GROUP}/{VERSION}", "modeldeployments", None),
    (f"{GROUP}/{VERSION}", "modelapprovals", None),
    ("v1", "namespaces", None),
    ("apps/v1", "deployments", MANAGED_BY),
    ("v1", "services", MANAGED_BY),
    ("v1", "configmaps", MANAGED_BY),
    ("autoscaling/v2", "horizontalpodautoscalers", MANAGED_BY),
    ("policy/v1", "poddisruptionbudgets", MANAGED_BY),
    ("batch/v1", "cronjobs", MANAGED_BY),
    ("networking.k8s.io/v1", "networkpolicies", MANAGED_BY),
    ("v1", "pods", MANAGED_BY),
):
    kopf.on.event(group_version, plural, labels=labels, id=f"seen-{plural}")(_seen)


if __name__ == "__main__":
    kopf.configure(verbose=False)
    kopf.run(standalone=True, clusterwide=True, liveness_endpoint=sys.argv[1])
