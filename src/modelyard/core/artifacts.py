"""A registered model version's files, fetched with an explicit registry.

MLflow's ``models:/`` loaders resolve the version through the process-wide registry URI
(``mlflow.get_registry_uri()``), whatever registry the caller names. modelyard resolves
the version with its own client, downloads the files from where the version says they
are, with the tracking URI named in the call, and loads from the local copy: two
registries in one process never mix.
"""

from __future__ import annotations

from pathlib import Path

from modelyard.core.registry import Registry


def artifact_location(tracking_uri: str, source: str) -> str:
    """Where a version's files are: its source, or for an MLflow 3 logged model
    (``models:/m-...``) that model's artifact location."""
    if source.startswith("models:/") and "/" not in source[len("models:/") :].strip("/"):
        from mlflow import MlflowClient

        model_id = source[len("models:/") :].strip("/")
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        return str(client.get_logged_model(model_id).artifact_location)
    return source


def download_version(registry: Registry, name: str, version: int | str, destination: Path) -> Path:
    """Download the files of ``name`` version ``version`` into ``destination`` and return
    the model directory (the one holding ``MLmodel``)."""
    from mlflow.artifacts import download_artifacts

    found = registry.get_version(name, int(version))
    location = artifact_location(registry.tracking_uri, found.source)
    destination.mkdir(parents=True, exist_ok=True)
    local = download_artifacts(
        artifact_uri=location, dst_path=str(destination), tracking_uri=registry.tracking_uri
    )
    return Path(local)
