"""A local MLflow store (SQLite, a database URL, ``file:``) as a :class:`Registry`.

For local pipeline runs and in-process tests; it needs MLflow itself, which only the
toolkit and server images carry (:func:`modelyard.core.registry.open_registry` imports
this module only for such a URI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from modelyard.core import contracts as c
from modelyard.core.registry import (
    DENIED_CODES,
    EXISTS_CODES,
    NOT_FOUND_CODES,
    DatasetInput,
    ModelNotFound,
    ModelVersion,
    NewVersion,
    Registry,
    RegistryAccessDenied,
    RegistryUnavailable,
    dataset_location,
)

T = TypeVar("T")


class LocalRegistry(Registry):
    """A local MLflow store (SQLite, a database URL, ``file:``) through MLflow's client."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        super().__init__(tracking_uri)
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _run(self, what: str, call: Callable[[], T]) -> T:
        from mlflow.exceptions import MlflowException

        try:
            return call()
        except MlflowException as exc:
            code = str(exc.error_code)
            if code in NOT_FOUND_CODES:
                raise ModelNotFound(f"{what}: not found in the registry") from None
            if code in DENIED_CODES:
                raise RegistryAccessDenied(f"{what}: access denied by the registry") from None
            # A local store is the caller's own: its message helps and reveals nothing.
            raise RegistryUnavailable(f"{what}: {exc.message}") from None
        except OSError as exc:
            raise RegistryUnavailable(f"{what}: {self.display_uri}: {exc.strerror}") from None

    def get_version(self, name: str, version: int) -> ModelVersion:
        what = f"model {name!r} version {version}"
        return _from_entity(
            self._run(what, lambda: self._client.get_model_version(name, str(version)))
        )

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        what = f"model {name!r} alias {alias!r}"
        return _from_entity(
            self._run(what, lambda: self._client.get_model_version_by_alias(name, alias))
        )

    def latest_versions(self, name: str, stage: str) -> list[ModelVersion]:
        what = f"model {name!r} stage {stage!r}"
        found = self._run(what, lambda: self._client.get_latest_versions(name, [stage]))
        return [_from_entity(v) for v in found]

    def run_inputs(self, run_id: str) -> list[DatasetInput]:
        run = self._run(f"run {run_id}", lambda: self._client.get_run(run_id))
        out: list[DatasetInput] = []
        for item in getattr(run.inputs, "dataset_inputs", None) or []:
            tags = {t.key: t.value for t in item.tags}
            out.append(
                DatasetInput(
                    name=item.dataset.name,
                    digest=item.dataset.digest,
                    source=dataset_location(item.dataset.source),
                    context=str(tags.get(c.DATASET_CONTEXT_TAG) or ""),
                )
            )
        return out

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._run(
            f"tag model {name!r} version {version}",
            lambda: self._client.set_model_version_tag(name, str(version), key, value),
        )

    def delete_version_tag(self, name: str, version: int, key: str) -> None:
        self._run(
            f"untag model {name!r} version {version}",
            lambda: self._client.delete_model_version_tag(name, str(version), key),
        )

    def create_registered_model(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            if str(exc.error_code) in EXISTS_CODES:
                return False
            raise RegistryUnavailable(f"create model {name!r}: {exc.error_code}") from None
        return True

    def create_version(self, new: NewVersion) -> ModelVersion:
        created = self._run(
            f"register a version of model {new.name!r}",
            lambda: self._client.create_model_version(
                new.name,
                new.source,
                run_id=new.run_id,
                tags=dict(new.tags),
                model_id=new.model_id,
            ),
        )
        return _from_entity(created)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._run(
            f"set alias {alias!r} of model {name!r}",
            lambda: self._client.set_registered_model_alias(name, alias, str(version)),
        )


def _from_entity(entity: Any) -> ModelVersion:
    tags: Iterable[tuple[str, str]] = (getattr(entity, "tags", None) or {}).items()
    return ModelVersion(
        name=str(entity.name),
        version=int(entity.version),
        run_id=str(entity.run_id or ""),
        source=str(entity.source or ""),
        status=str(entity.status),
        tags=dict(tags),
        aliases=tuple(getattr(entity, "aliases", None) or ()),
    )
