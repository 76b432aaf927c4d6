"""Resolving ModelDeployment references in the MLflow Model Registry.

The operator serves many ModelDeployments, each possibly with its own registry and
credentials, from one process. MLflow's ``MlflowClient`` reads credentials from
process-wide environment variables, so this module talks to the registry through
MLflow's REST stores with per-registry host credentials instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
from mlflow.store.tracking.rest_store import RestStore as TrackingRestStore
from mlflow.utils.rest_utils import MlflowHostCreds

from modelyard.operator.resource import ModelRef

logger = logging.getLogger(__name__)

# Tag written on the served model version: "where is version 7 deployed?"
DEPLOYED_TAG_PREFIX = "modelyard.io/deployed"

_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
_DENIED_CODES = {"PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED"}


class RegistryError(Exception):
    """A reference could not be resolved; ``reason`` is the condition reason."""

    reason = "RegistryError"


class ModelNotFound(RegistryError):
    reason = "ModelNotFound"


class VersionNotReady(RegistryError):
    reason = "VersionNotReady"


class RegistryUnavailable(RegistryError):
    reason = "RegistryUnavailable"


class RegistryAccessDenied(RegistryError):
    reason = "RegistryAccessDenied"


@dataclass(frozen=True)
class Credentials:
    """Registry credentials, as read from the referenced Secret."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Credentials:
        return cls(
            username=data.get("MLFLOW_TRACKING_USERNAME") or None,
            password=data.get("MLFLOW_TRACKING_PASSWORD") or None,
            token=data.get("MLFLOW_TRACKING_TOKEN") or None,
        )


@dataclass(frozen=True)
class DatasetInput:
    name: str
    digest: str
    source: str
    context: str

    def to_status(self) -> dict[str, str]:
        return {
            "name": self.name,
            "digest": self.digest,
            "source": self.source,
            "context": self.context,
        }


@dataclass(frozen=True)
class ResolvedModel:
    """A concrete, READY model version a reference points to right now."""

    name: str
    version: int
    run_id: str
    source: str
    datasets: tuple[DatasetInput, ...] = field(default=())

    @property
    def uri(self) -> str:
        """The pinned URI given to the server: never the alias."""
        return f"models:/{self.name}/{self.version}"


def deployed_tag_key(namespace: str, name: str) -> str:
    return f"{DEPLOYED_TAG_PREFIX}/{namespace}/{name}"


T = TypeVar("T")


class RegistryClient:
    """The registry operations the operator needs, for one tracking server."""

    def __init__(self, tracking_uri: str, credentials: Credentials | None = None) -> None:
        creds = credentials or Credentials()
        host_creds = MlflowHostCreds(
            host=tracking_uri.rstrip("/"),
            username=creds.username,
            password=creds.password,
            token=creds.token,
        )
        self.tracking_uri = tracking_uri
        self._registry = RegistryRestStore(lambda: host_creds)
        self._tracking = TrackingRestStore(lambda: host_creds)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RestException as e:
            if e.error_code in _NOT_FOUND_CODES:
                raise ModelNotFound(f"{what}: {e.message}") from e
            if e.error_code in _DENIED_CODES:
                raise RegistryAccessDenied(f"{what}: {e.message}") from e
            raise RegistryUnavailable(f"{what}: {e.message}") from e
        except MlflowException as e:
            if e.error_code in _DENIED_CODES:
                raise RegistryAccessDenied(f"{what}: {e.message}") from e
            raise RegistryUnavailable(
                f"{what}: registry at {self.tracking_uri} unavailable: {e.message}"
            ) from e
        except OSError as e:
            raise RegistryUnavailable(
                f"{what}: registry at {self.tracking_uri} unreachable: {e}"
            ) from e

    def resolve(self, ref: ModelRef) -> ResolvedModel:
        """The READY version ``ref`` points to, with its run's dataset inputs."""
        name = ref.name
        if ref.version is not None:
            version = ref.version
            mv = self._call(
                f"model {name!r} version {version}",
                lambda: self._registry.get_model_version(name, str(version)),
            )
        elif ref.alias is not None:
            alias = ref.alias
            mv = self._call(
                f"model {name!r} alias {alias!r}",
                lambda: self._registry.get_model_version_by_alias(name, alias),
            )
        else:
            stage = str(ref.stage)
            versions = self._call(
                f"model {name!r} stage {stage!r}",
                lambda: self._registry.get_latest_versions(name, [stage]),
            )
            if not versions:
                raise ModelNotFound(f"model {name!r} has no version in stage {stage!r}")
            mv = max(versions, key=lambda v: int(v.version))
        status = str(mv.status)
        if status != "READY":
            raise VersionNotReady(
                f"model {name!r} version {mv.version} is {status}; only READY versions are served"
            )
        datasets = self._datasets(mv.run_id) if mv.run_id else ()
        return ResolvedModel(
            name=name,
            version=int(mv.version),
            run_id=mv.run_id or "",
            source=mv.source or "",
            datasets=datasets,
        )

    def _datasets(self, run_id: str) -> tuple[DatasetInput, ...]:
        try:
            run = self._call(f"run {run_id}", lambda: self._tracking.get_run(run_id))
        except ModelNotFound:
            # The run may have been deleted; the version still serves.
            return ()
        inputs = getattr(run, "inputs", None)
        out: list[DatasetInput] = []
        for dsi in getattr(inputs, "dataset_inputs", None) or []:
            ds = dsi.dataset
            context = next((t.value for t in dsi.tags if t.key == "mlflow.data.context"), "")
            out.append(
                DatasetInput(
                    name=ds.name,
                    digest=ds.digest,
                    source=_dataset_source(ds.source),
                    context=context,
                )
            )
        return tuple(out)

    def mark_deployed(
        self, name: str, version: int, namespace: str, md_name: str, since: str
    ) -> None:
        """Tag the version with where it is live and since when (idempotent)."""
        key = deployed_tag_key(namespace, md_name)
        self._call(
            f"tag model {name!r} version {version}",
            lambda: self._registry.set_model_version_tag(
                name, str(version), ModelVersionTag(key=key, value=since)
            ),
        )

    def unmark_deployed(self, name: str, version: int, namespace: str, md_name: str) -> None:
        """Remove the deployment tag; a version or tag that is gone already is fine."""
        key = deployed_tag_key(namespace, md_name)
        try:
            self._call(
                f"untag model {name!r} version {version}",
                lambda: self._registry.delete_model_version_tag(name, str(version), key),
            )
        except ModelNotFound:
            logger.info("tag %s on %s/%s was already gone", key, name, version)

    def version_tags(self, name: str, version: int) -> dict[str, str]:
        mv = self._call(
            f"model {name!r} version {version}",
            lambda: self._registry.get_model_version(name, str(version)),
        )
        return dict(mv.tags)


def _dataset_source(raw: Any) -> str:
    """MLflow stores a dataset's source as JSON, e.g. ``{"uri": "s3://..."}``."""
    if not isinstance(raw, str):
        return str(raw)
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    if isinstance(parsed, dict):
        for key in ("uri", "url", "path", "table_name"):
            if key in parsed:
                return str(parsed[key])
    return raw
