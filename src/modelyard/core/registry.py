"""The MLflow Model Registry, as every modelyard component uses it.

One client, two ways in:

- a tracking **server** (``http://``/``https://``): MLflow's REST API, spoken with httpx.
  Credentials belong to the client (one per registry), never to the process: the
  operator serves ModelDeployments of many teams, each with its own Secret. Every call
  has a timeout, redirects are not followed (credentials go only to the host they were
  given for), answers are size-capped, and error messages are built from what the client
  knows (the call, the status code), never from the body of the answer;
- a **local store** (``sqlite:///``, ``file:``, a database URL): MLflow's own client on
  that store, for local pipeline runs and in-process tests.

Both give the same typed answers and errors. Nothing here touches MLflow's process-wide
state (``mlflow.set_tracking_uri``, ``os.environ``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from modelyard.core import contracts as c
from modelyard.core.redaction import redact_uri

logger = logging.getLogger(__name__)

#: Seconds a registry call may take, connection included.
DEFAULT_TIMEOUT = 10.0
#: The most of an answer the client reads; registry metadata is a few KiB.
MAX_RESPONSE_BYTES = 1024 * 1024
READY = "READY"
STAGES = ("Staging", "Production", "Archived")


# ------------------------------------------------------------------------------ errors
class RegistryError(Exception):
    """A registry call failed; ``reason`` is the condition reason a resource shows."""

    reason: ClassVar[str] = "RegistryError"


class ModelNotFound(RegistryError):
    reason = "ModelNotFound"


class VersionNotReady(RegistryError):
    reason = "VersionNotReady"


class RegistryUnavailable(RegistryError):
    reason = "RegistryUnavailable"


class RegistryAccessDenied(RegistryError):
    reason = "RegistryAccessDenied"


# ------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class Credentials:
    """What the registry is told about who calls: a user name and password, or a token."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> Credentials:
        """From a Secret's data or an environment, under the keys MLflow reads."""
        return cls(
            username=data.get(c.TRACKING_USERNAME_ENV) or None,
            password=data.get(c.TRACKING_PASSWORD_ENV) or None,
            token=data.get(c.TRACKING_TOKEN_ENV) or None,
        )

    def headers(self) -> dict[str, str]:
        import base64

        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None and self.password is not None:
            pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}

    def __repr__(self) -> str:  # never print a password
        return f"Credentials(username={self.username!r}, password=..., token=...)"


@dataclass(frozen=True)
class ModelReference:
    """A registered model plus exactly one of version, alias or stage."""

    name: str
    version: int | None = None
    alias: str | None = None
    stage: str | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.version, self.alias, self.stage) if x is not None]
        if len(given) != 1:
            raise ValueError("a model reference has exactly one of version, alias or stage")
        if self.stage is not None and self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")

    @property
    def label(self) -> str:
        """``alias:champion``, ``version:3`` or ``stage:Production``."""
        if self.version is not None:
            return f"version:{self.version}"
        if self.alias is not None:
            return f"alias:{self.alias}"
        return f"stage:{self.stage}"

    @property
    def is_floating(self) -> bool:
        """Aliases and stages move; a version never does."""
        return self.version is None

    def describe(self) -> str:
        return f"model {self.name!r} {self.label.replace(':', ' ')}"


@dataclass(frozen=True)
class DatasetInput:
    """One dataset a run logged as an input (lineage)."""

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
class ModelVersion:
    """A registered model version, as the registry describes it."""

    name: str
    version: int
    run_id: str
    source: str
    status: str
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        """The pinned URI a server is given: ``models:/NAME/VERSION``, never an alias."""
        return f"models:/{self.name}/{self.version}"

    @property
    def ready(self) -> bool:
        return self.status == READY


@dataclass(frozen=True)
class NewVersion:
    """A version to register: the model's files (``source``), the run that made them."""

    name: str
    source: str
    run_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    #: The MLflow 3 logged model the files belong to, if any.
    model_id: str | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """A READY version a reference points to, with the datasets it was trained on."""

    version: ModelVersion
    datasets: tuple[DatasetInput, ...] = ()

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def number(self) -> int:
        return self.version.version

    @property
    def run_id(self) -> str:
        return self.version.run_id

    @property
    def uri(self) -> str:
        return self.version.uri


def dataset_location(source: Any) -> str:
    """Where a dataset input came from, whatever kind of source MLflow logged.

    MLflow stores a dataset's source as JSON that depends on its kind: ``{"uri": ...}``
    (files, fsspec, S3), ``{"url": ...}`` (HTTP), ``{"path": ...}`` (Delta, Hugging
    Face), ``{"table_name": ...}`` or ``{"query": ...}`` (SQL, Spark tables).
    """
    if not isinstance(source, str):
        return str(source)
    try:
        parsed = json.loads(source)
    except json.JSONDecodeError:
        return source
    if isinstance(parsed, dict):
        for key in ("uri", "url", "path", "table_name", "query", "sql"):
            value = parsed.get(key)
            if isinstance(value, str) and value:
                return value
    return source


T = TypeVar("T")


# ------------------------------------------------------------------------------ client
class Registry:
    """The registry operations modelyard needs. Use :func:`open_registry`."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        #: The URI as it may be shown: no credentials.
        self.display_uri = redact_uri(tracking_uri)

    # The primitives each way in provides.
    def get_version(self, name: str, version: int) -> ModelVersion:
        raise NotImplementedError

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        raise NotImplementedError

    def latest_versions(self, name: str, stage: str) -> list[ModelVersion]:
        raise NotImplementedError

    def run_inputs(self, run_id: str) -> list[DatasetInput]:
        raise NotImplementedError

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        raise NotImplementedError

    def delete_version_tag(self, name: str, version: int, key: str) -> None:
        raise NotImplementedError

    def create_registered_model(self, name: str) -> bool:
        """Create the registered model; False when it exists already."""
        raise NotImplementedError

    def create_version(self, new: NewVersion) -> ModelVersion:
        raise NotImplementedError

    def set_alias(self, name: str, alias: str, version: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the client is usable until then)."""

    # What the components build on them.
    def resolve(self, ref: ModelReference) -> ModelVersion:
        """The READY version ``ref`` points to right now."""
        if ref.version is not None:
            found = self.get_version(ref.name, ref.version)
        elif ref.alias is not None:
            found = self.get_version_by_alias(ref.name, ref.alias)
        else:
            assert ref.stage is not None
            versions = self.latest_versions(ref.name, ref.stage)
            if not versions:
                raise ModelNotFound(f"model {ref.name!r} has no version in stage {ref.stage!r}")
            found = max(versions, key=lambda v: v.version)
        if not found.ready:
            raise VersionNotReady(
                f"model {ref.name!r} version {found.version} is {found.status}; "
                "only READY versions are served"
            )
        return found

    def lineage(self, run_id: str) -> tuple[DatasetInput, ...]:
        """The datasets a run logged as inputs; none when the run is gone."""
        if not run_id:
            return ()
        try:
            return tuple(self.run_inputs(run_id))
        except ModelNotFound:
            # The run may have been deleted; the version still serves.
            return ()

    def resolve_with_lineage(self, ref: ModelReference) -> ResolvedModel:
        version = self.resolve(ref)
        return ResolvedModel(version, self.lineage(version.run_id))

    def alias_version(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` points to, or None when the model has no such alias."""
        try:
            return self.get_version_by_alias(name, alias)
        except ModelNotFound:
            return None

    def delete_version_tag_if_present(self, name: str, version: int, key: str) -> None:
        try:
            self.delete_version_tag(name, version, key)
        except ModelNotFound:
            logger.debug("tag %s on %s/%s was already gone", key, name, version)

    def wait_ready(self, name: str, version: int, timeout: float = 300) -> ModelVersion:
        """Poll until a new version is READY (a store may copy the files first)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.get_version(name, version)
            if found.ready:
                return found
            if found.status != "PENDING_REGISTRATION" or time.monotonic() > deadline:
                raise VersionNotReady(f"model {name!r} version {version} is {found.status}")
            time.sleep(1)


def open_registry(
    tracking_uri: str, credentials: Credentials | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> Registry:
    """A client for the registry at ``tracking_uri``, with these credentials."""
    if tracking_uri.startswith(("http://", "https://")):
        return RestRegistry(tracking_uri, credentials, timeout=timeout)
    # MLflow itself opens a local store; images without MLflow (the operator's) never do.
    from modelyard.core.local_registry import LocalRegistry

    return LocalRegistry(tracking_uri)


# ------------------------------------------------------------------ MLflow's REST API
_API = "/api/2.0/mlflow"
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
DENIED_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED"})
EXISTS_CODES = frozenset({"RESOURCE_ALREADY_EXISTS"})


class _Answer:
    __slots__ = ("body", "error_code", "status")

    def __init__(self, status: int, error_code: str, body: dict[str, Any]) -> None:
        self.status = status
        self.error_code = error_code
        self.body = body


class RestRegistry(Registry):
    """A tracking server, through MLflow's REST API."""

    def __init__(
        self,
        tracking_uri: str,
        credentials: Credentials | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
    ) -> None:
        import httpx

        super().__init__(tracking_uri)
        self._base = tracking_uri.rstrip("/")
        self._retries = retries
        self._client = httpx.Client(
            headers={**(credentials or Credentials()).headers(), "User-Agent": "modelyard"},
            timeout=httpx.Timeout(timeout),
            # Credentials go to the host they were given for, and nowhere else.
            follow_redirects=False,
            trust_env=False,
        )

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        what: str,
        method: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> _Answer:
        import httpx

        url = f"{self._base}{_API}{endpoint}"
        attempts = 1 + (self._retries if method == "GET" else 0)
        for attempt in range(attempts):
            try:
                with self._client.stream(method, url, params=params, json=body) as response:
                    raw = _read_capped(response)
                    status = response.status_code
            except httpx.TimeoutException as exc:
                failure = f"no answer from {self.display_uri} in time ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                failure = f"{self.display_uri} unreachable ({type(exc).__name__})"
            except _TooLarge:
                raise RegistryUnavailable(
                    f"{what}: {self.display_uri} answered with more than "
                    f"{MAX_RESPONSE_BYTES} bytes; is it an MLflow tracking server?"
                ) from None
            else:
                return self._answer(what, status, raw)
            if attempt + 1 < attempts:
                time.sleep(0.5)
        raise RegistryUnavailable(f"{what}: {failure}")

    def _answer(self, what: str, status: int, raw: bytes) -> _Answer:
        if status in (401, 403):  # MLflow's auth app answers these in plain text
            raise RegistryAccessDenied(
                f"{what}: the registry refused the credentials (HTTP {status}); check "
                "spec.registry.credentialsSecretRef and the user's permissions"
            )
        try:
            document = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        if not isinstance(document, dict):
            # Never echo the body: the URL may not be a registry at all.
            raise RegistryUnavailable(
                f"{what}: {self.display_uri} answered HTTP {status} with something that is "
                "not MLflow's JSON; is it an MLflow tracking server?"
            )
        code = document.get("error_code")
        error_code = code if isinstance(code, str) else ""
        if status == 200:
            return _Answer(status, "", document)
        if error_code in DENIED_CODES:
            raise RegistryAccessDenied(
                f"{what}: the registry refused the credentials (HTTP {status}); check "
                "spec.registry.credentialsSecretRef and the user's permissions"
            )
        if error_code in NOT_FOUND_CODES or status == 404:
            return _Answer(status, "RESOURCE_DOES_NOT_EXIST", document)
        if error_code in EXISTS_CODES:
            return _Answer(status, "RESOURCE_ALREADY_EXISTS", document)
        raise RegistryUnavailable(f"{what}: the registry answered HTTP {status}")

    def _ok(self, what: str, answer: _Answer) -> dict[str, Any]:
        if answer.status != 200:
            raise ModelNotFound(f"{what}: not found in the registry")
        return answer.body

    def get_version(self, name: str, version: int) -> ModelVersion:
        what = f"model {name!r} version {version}"
        answer = self._call(
            what,
            "GET",
            "/model-versions/get",
            params={"name": name, "version": str(version)},
        )
        return _version_from_json(what, self._ok(what, answer).get("model_version"))

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        what = f"model {name!r} alias {alias!r}"
        answer = self._call(
            what, "GET", "/registered-models/alias", params={"name": name, "alias": alias}
        )
        return _version_from_json(what, self._ok(what, answer).get("model_version"))

    def latest_versions(self, name: str, stage: str) -> list[ModelVersion]:
        what = f"model {name!r} stage {stage!r}"
        answer = self._call(
            what,
            "POST",
            "/registered-models/get-latest-versions",
            body={"name": name, "stages": [stage]},
        )
        versions = self._ok(what, answer).get("model_versions") or []
        return [_version_from_json(what, v) for v in versions]

    def run_inputs(self, run_id: str) -> list[DatasetInput]:
        what = f"run {run_id}"
        answer = self._call(what, "GET", "/runs/get", params={"run_id": run_id})
        run = self._ok(what, answer).get("run") or {}
        inputs = (run.get("inputs") or {}).get("dataset_inputs") or []
        out: list[DatasetInput] = []
        for item in inputs:
            dataset = item.get("dataset") or {}
            tags = {t.get("key"): t.get("value") for t in item.get("tags") or []}
            out.append(
                DatasetInput(
                    name=str(dataset.get("name", "")),
                    digest=str(dataset.get("digest", "")),
                    source=dataset_location(dataset.get("source", "")),
                    context=str(tags.get(c.DATASET_CONTEXT_TAG) or ""),
                )
            )
        return out

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        what = f"tag model {name!r} version {version}"
        body = {"name": name, "version": str(version), "key": key, "value": value}
        self._ok(what, self._call(what, "POST", "/model-versions/set-tag", body=body))

    def delete_version_tag(self, name: str, version: int, key: str) -> None:
        what = f"untag model {name!r} version {version}"
        body = {"name": name, "version": str(version), "key": key}
        self._ok(what, self._call(what, "DELETE", "/model-versions/delete-tag", body=body))

    def create_registered_model(self, name: str) -> bool:
        what = f"create model {name!r}"
        answer = self._call(what, "POST", "/registered-models/create", body={"name": name})
        if answer.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        self._ok(what, answer)
        return True

    def create_version(self, new: NewVersion) -> ModelVersion:
        what = f"register a version of model {new.name!r}"
        body: dict[str, Any] = {"name": new.name, "source": new.source, "run_id": new.run_id}
        if new.model_id:
            body["model_id"] = new.model_id
        if new.tags:
            body["tags"] = [{"key": k, "value": v} for k, v in new.tags.items()]
        answer = self._call(what, "POST", "/model-versions/create", body=body)
        return _version_from_json(what, self._ok(what, answer).get("model_version"))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        what = f"set alias {alias!r} of model {name!r}"
        body = {"name": name, "alias": alias, "version": str(version)}
        self._ok(what, self._call(what, "POST", "/registered-models/alias", body=body))


class _TooLarge(Exception):
    pass


def _read_capped(response: Any) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise _TooLarge()
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _version_from_json(what: str, data: Any) -> ModelVersion:
    if not isinstance(data, dict):
        raise RegistryUnavailable(f"{what}: the registry's answer has no model version")
    try:
        number = int(data.get("version", ""))
    except (TypeError, ValueError):
        raise RegistryUnavailable(f"{what}: the registry's answer has no version number") from None
    tags = {str(t.get("key")): str(t.get("value", "")) for t in data.get("tags") or []}
    return ModelVersion(
        name=str(data.get("name", "")),
        version=number,
        run_id=str(data.get("run_id") or ""),
        source=str(data.get("source") or ""),
        status=str(data.get("status") or ""),
        tags=tags,
        aliases=tuple(str(a) for a in data.get("aliases") or ()),
    )
