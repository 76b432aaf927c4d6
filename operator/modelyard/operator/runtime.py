"""Start the operator process (``modelyard operator``)."""

from __future__ import annotations

import importlib

import kopf


def run(*, namespaces: list[str], liveness: str | None, verbose: bool) -> None:
    """Run kopf with our handlers until SIGTERM/SIGINT.

    Standalone (no peering): the operator runs as one replica with ``strategy:
    Recreate``, so there is never a second instance to coordinate with.
    """
    kopf.configure(verbose=verbose)
    importlib.import_module("modelyard.operator.handlers")  # registers the handlers
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
    )
