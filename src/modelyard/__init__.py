"""modelyard: serve MLflow registry models on Kubernetes, with pipelines and drift checks.

Components (each its own sub-package):

- ``modelyard.operator``: the Kopf operator for ``ModelDeployment`` resources.
- ``modelyard.serving``: the BentoML model server.
- ``modelyard.pipelines``: ingestion, feature DAGs, training, drift checks.
"""

from modelyard._version import __version__

__all__ = ["__version__"]
