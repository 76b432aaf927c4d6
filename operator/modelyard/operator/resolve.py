"""The resolve phase: what a ModelDeployment's reference points to in its registry.

A registry is asked once per distinct reference per resolve interval, however many
ModelDeployments follow it: answers (a version, or the error) are shared through
:class:`Resolver`. A run's lineage never changes, so it is asked once per run.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelyard.core.registry import (
    Credentials,
    DatasetInput,
    ModelReference,
    ModelVersion,
    Registry,
    RegistryError,
    RegistryUnavailable,
    ResolvedModel,
    open_registry,
)
from modelyard.operator.metrics import OperatorMetrics
from modelyard.operator.resource import ModelDeploymentSpec
from modelyard.operator.rest import Rest


@dataclass(frozen=True)
class RegistryTarget:
    """A registry, and the Secret (namespace, name) whose credentials are used with it;
    ``installation``: the installation's own registry, spoken to with the operator's own
    registry user when no Secret is named."""

    tracking_uri: str
    secret: tuple[str, str] | None = None
    installation: bool = False


@dataclass(frozen=True)
class Failure:
    """Why a phase could not do its work; ``reason`` goes into the conditions."""

    reason: str
    message: str
    #: The user must change something (the spec, the operator's settings).
    permanent: bool = False


@dataclass(frozen=True)
class Resolution:
    """The resolve phase's answer for one ModelDeployment: a model or a failure."""

    target: RegistryTarget | None
    model: ResolvedModel | None = None
    failure: Failure | None = None


class CredentialsNotFound(RegistryError):
    reason = "CredentialsNotFound"


Outcome = ModelVersion | RegistryError


class Registries:
    """One registry client per registry and credentials, and credentials read from
    Secrets (cached for ``secret_ttl`` seconds: a rotated Secret is picked up then)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        timeout: float,
        api_timeout: float = 30.0,
        secret_ttl: float = 30.0,
        opener: Callable[..., Registry] = open_registry,
        own_credentials: Credentials | None = None,
    ) -> None:
        #: The operator's own registry user, sent only to the installation's registry.
        self.own_credentials = own_credentials or Credentials()
        self._rest = Rest(api_client, api_timeout)
        self._timeout = timeout
        self._api_timeout = api_timeout
        self._secret_ttl = secret_ttl
        self._open = opener
        self._lock = threading.Lock()
        self._secrets: dict[tuple[str, str], tuple[float, Credentials]] = {}
        self._clients: dict[tuple[str, Credentials], Registry] = {}

    def credentials(self, namespace: str, name: str) -> Credentials:
        now = time.monotonic()
        with self._lock:
            cached = self._secrets.get((namespace, name))
        if cached is not None and now - cached[0] < self._secret_ttl:
            return cached[1]
        try:
            secret = self._rest.get("v1", "Secret", namespace, name)
        except ApiException as error:
            raise RegistryUnavailable(
                f"cannot read Secret {namespace}/{name} (HTTP {error.status})"
            ) from None
        if secret is None:
            raise CredentialsNotFound(
                f"Secret {namespace}/{name} named in spec.registry.credentialsSecretRef "
                "does not exist"
            )
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        found = Credentials.from_mapping(data)
        with self._lock:
            self._secrets[(namespace, name)] = (now, found)
        return found

    def client(self, target: RegistryTarget) -> Registry:
        if target.secret:
            creds = self.credentials(*target.secret)
        elif target.installation:
            creds = self.own_credentials
        else:
            creds = Credentials()
        key = (target.tracking_uri, creds)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                found = self._open(target.tracking_uri, creds, timeout=self._timeout)
                self._clients[key] = found
            return found

    def close(self) -> None:
        with self._lock:
            for registry in self._clients.values():
                registry.close()
            self._clients.clear()


class Resolver:
    """Answers for references, shared while younger than the resolve interval."""

    def __init__(
        self, registries: Registries, interval: float, metrics: OperatorMetrics | None = None
    ) -> None:
        self.registries = registries
        self.interval = interval
        self.metrics = metrics or OperatorMetrics()
        self._lock = threading.Lock()
        self._answers: dict[tuple[RegistryTarget, ModelReference], tuple[float, Outcome]] = {}
        self._lineage: dict[tuple[str, str], tuple[DatasetInput, ...]] = {}
        self._inflight: dict[tuple[RegistryTarget, ModelReference], threading.Lock] = {}
        #: Registry requests made, by kind (read by tests and the operator's metrics).
        self.calls: dict[str, int] = {"resolve": 0, "lineage": 0}

    def cached(self, target: RegistryTarget, ref: ModelReference) -> Outcome | None:
        with self._lock:
            found = self._answers.get((target, ref))
        return found[1] if found is not None else None

    def resolve(
        self, target: RegistryTarget, ref: ModelReference, *, max_age: float | None = None
    ) -> Outcome:
        """The version ``ref`` points to (or why not), asked at most once per ``max_age``."""
        age_limit = self.interval if max_age is None else max_age
        key = (target, ref)
        with self._lock:
            lock = self._inflight.setdefault(key, threading.Lock())
        with lock:  # one request per reference at a time; the others share its answer
            with self._lock:
                found = self._answers.get(key)
            if found is not None and time.monotonic() - found[0] < age_limit:
                return found[1]
            outcome: Outcome
            host = registry_label(target.tracking_uri)
            started = time.monotonic()
            try:
                outcome = self.registries.client(target).resolve(ref)
            except RegistryError as error:
                outcome = error
                self.metrics.registry_errors.labels(host, error.reason).inc()
            self.metrics.registry_requests.labels(host, "resolve").inc()
            self.metrics.registry_seconds.labels(host).observe(time.monotonic() - started)
            with self._lock:
                self.calls["resolve"] += 1
                self._answers[key] = (time.monotonic(), outcome)
            return outcome

    def forget(self, model_name: str | None = None) -> None:
        """Drop cached answers (of one model): the next resolve asks the registry."""
        with self._lock:
            for key in list(self._answers):
                if model_name is None or key[1].name == model_name:
                    del self._answers[key]

    def lineage(self, target: RegistryTarget, run_id: str) -> tuple[DatasetInput, ...]:
        key = (target.tracking_uri, run_id)
        with self._lock:
            found = self._lineage.get(key)
        if found is not None:
            return found
        datasets = self.registries.client(target).lineage(run_id)
        self.metrics.registry_requests.labels(registry_label(target.tracking_uri), "lineage").inc()
        with self._lock:
            self.calls["lineage"] += 1
            self._lineage[key] = datasets
        return datasets


def registry_label(tracking_uri: str) -> str:
    """A registry as a metric label: its host and port, never credentials or paths."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(tracking_uri).netloc.rsplit("@", 1)[-1] or "local"
    except ValueError:
        return "invalid"


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, uri: str, *, any_port: bool = False) -> _Origin | str:
        """The parts of an http(s) registry URI that the allow-list compares, or why the
        URI is not one a registry may have (credentials, a query or a fragment in it).
        With ``any_port``, an allow-list entry may say ``host:*`` (port 0: every port)."""
        from urllib.parse import urlsplit

        text = uri.strip()
        wildcard = False
        if any_port:
            head, sep, tail = text.partition("://")
            host, slash, path = tail.partition("/")
            if sep and host.endswith(":*"):
                text, wildcard = f"{head}://{host[:-2]}{slash}{path}", True
        try:
            parts = urlsplit(text)
            port = 0 if wildcard else parts.port
        except ValueError:
            return "is not a valid URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "is not an http:// or https:// URL"
        if parts.username is not None or parts.password is not None:
            return "carries credentials (use spec.registry.credentialsSecretRef)"
        if parts.query or parts.fragment or uri.rstrip().endswith(("?", "#")):
            return "has a query or fragment (a tracking URI is scheme://host[:port][/path])"
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname.lower(), port, parts.path.rstrip("/"))

    def covers(self, other: _Origin) -> bool:
        same_host = (self.scheme, self.host) == (other.scheme, other.host) and (
            self.port in (0, other.port)
        )
        return same_host and (
            not self.path or other.path == self.path or other.path.startswith(self.path + "/")
        )


@dataclass(frozen=True)
class RegistryPolicy:
    """Which registries ModelDeployments may use: the operator's default one and those
    its installation lists (``MODELYARD_ALLOWED_REGISTRIES``). A URI outside them is
    refused before any request is made, so neither a request nor a Secret's credentials
    reach a host the installation did not name."""

    default: str | None = None
    allowed: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, default: str | None, allowed: str) -> RegistryPolicy:
        listed = tuple(x for x in allowed.replace(",", " ").split() if x)
        return cls(default or None, listed)

    def _origins(self) -> list[_Origin]:
        found = []
        for entry in (self.default, *self.allowed):
            parsed = _Origin.parse(entry, any_port=True) if entry else None
            if isinstance(parsed, _Origin):
                found.append(parsed)
        return found

    def is_default(self, uri: str) -> bool:
        """``uri`` is the installation's own registry (the same scheme, host, port, path)."""
        if not self.default:
            return False
        mine, theirs = _Origin.parse(self.default), _Origin.parse(uri)
        return uri == self.default or (isinstance(mine, _Origin) and mine == theirs)

    def check(self, uri: str) -> Failure | None:
        parsed = _Origin.parse(uri)
        if isinstance(parsed, str):
            return Failure(
                "RegistryNotAllowed",
                f"spec.registry.trackingUri {parsed}; no request was sent",
                permanent=True,
            )
        if any(origin.covers(parsed) for origin in self._origins()):
            return None
        return Failure(
            "RegistryNotAllowed",
            f"registry {parsed.scheme}://{parsed.host}:{parsed.port} is not allowed by this "
            "installation; no request was sent. Use the default registry (leave "
            "spec.registry.trackingUri unset) or ask the operator's administrators to add "
            "it to the chart's operator.allowedRegistries",
            permanent=True,
        )


def registry_target(
    spec: ModelDeploymentSpec, namespace: str, policy: RegistryPolicy
) -> RegistryTarget | Failure:
    uri = spec.registry.tracking_uri or policy.default
    if not uri:
        return Failure(
            "NoRegistry",
            "no registry: set spec.registry.trackingUri (the operator has no default "
            "MODELYARD_DEFAULT_TRACKING_URI)",
            permanent=True,
        )
    if spec.registry.tracking_uri:
        refused = policy.check(spec.registry.tracking_uri)
        if refused is not None:
            return refused
    secret = spec.registry.credentials_secret_ref
    if secret is not None:
        return RegistryTarget(uri, (namespace, secret.name))
    return RegistryTarget(uri, None, installation=policy.is_default(uri))


def resolve_model(
    resolver: Resolver,
    spec: ModelDeploymentSpec,
    namespace: str,
    live: dict[str, Any],
    policy: RegistryPolicy,
    *,
    max_age: float | None = None,
) -> Resolution:
    """The resolve phase for one ModelDeployment whose live model is ``live``
    (``status.model``): the version its reference points to, with lineage."""
    target = registry_target(spec, namespace, policy)
    if isinstance(target, Failure):
        return Resolution(None, failure=target)
    ref = spec.model.to_reference()
    outcome = resolver.resolve(target, ref, max_age=max_age)
    if isinstance(outcome, RegistryError):
        return Resolution(target, failure=Failure(outcome.reason, str(outcome)))
    try:
        if live.get("version") == outcome.version and live.get("runId") == outcome.run_id:
            # The live version's lineage is in its status already.
            datasets = tuple(
                DatasetInput(
                    name=str(d.get("name", "")),
                    digest=str(d.get("digest", "")),
                    source=str(d.get("source", "")),
                    context=str(d.get("context", "")),
                )
                for d in live.get("datasets") or []
            )
        else:
            datasets = resolver.lineage(target, outcome.run_id)
    except RegistryError as error:
        return Resolution(target, failure=Failure(error.reason, str(error)))
    return Resolution(target, model=ResolvedModel(outcome, datasets))


def resolve_shadow(
    resolver: Resolver, spec: ModelDeploymentSpec, target: RegistryTarget | None
) -> ModelVersion | None:
    """The READY version ``spec.rollout.shadow`` points to (a version or an alias of the
    same model), or None: no shadow, or it does not resolve (nothing is mirrored)."""
    shadow = spec.rollout.shadow
    if shadow is None or target is None:
        return None
    ref = ModelReference(spec.model.name, shadow.version, shadow.alias, None)
    outcome = resolver.resolve(target, ref)
    if isinstance(outcome, RegistryError) or not outcome.ready:
        return None
    return outcome
