"""Loading the served model from MLflow and calling it on a batch of validated columns."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from modelyard.core import contracts as c
from modelyard.core.model_safety import check_model_format
from modelyard.core.registry import (
    Credentials,
    ModelReference,
    Registry,
    RegistryUnavailable,
    open_registry,
)
from modelyard.serving.model_cache import ModelCache, registry_key
from modelyard.serving.payload import Array, InputSchema

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str


#: Where the model's files came from: the registry, the model cache (the registry was
#: unreachable), or the URI itself (runs:/, a path).
ModelSource = Literal["registry", "cache", "uri"]

_PINNED_VERSION = re.compile(r"^models:/(?P<name>[^@]+)/(?P<version>[0-9]+)/?$")


class ModelUnavailable(Exception):
    """The model cannot be loaded: the registry is unreachable and there is no cached copy."""


@dataclass(frozen=True)
class LocalModel:
    """A model's files on local disk, and where they came from."""

    path: Path
    source: ModelSource
    #: The content digest of the cache entry (written or read); None without a cache.
    digest: str | None = None


def identify_model_uri(uri: str) -> ModelIdentity:
    """Name and version as far as the URI alone tells them.

    ``models:/NAME/VERSION`` -> (NAME, VERSION); ``models:/NAME@ALIAS`` needs the registry
    (see :func:`resolve_model_identity`); ``runs:/RUN/PATH`` -> (PATH's last part, RUN);
    a local path -> (its directory name, ``local``).
    """
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :].strip("/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return ModelIdentity(name, f"@{alias}")
        name, _, version = rest.partition("/")
        return ModelIdentity(name, version or "latest")
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].strip("/").partition("/")
        return ModelIdentity(path.rstrip("/").rsplit("/", 1)[-1] or run_id, run_id)
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return ModelIdentity(os.path.basename(os.path.normpath(path)) or "model", "local")


def resolve_model_identity(
    uri: str, name: str | None = None, version: str | None = None
) -> ModelIdentity:
    """The identity the server reports: explicit settings win, then the registry."""
    derived = identify_model_uri(uri)
    if version is None and derived.version.startswith("@"):
        found = _registry().resolve(ModelReference(derived.name, alias=derived.version[1:]))
        derived = ModelIdentity(derived.name, str(found.version))
    return ModelIdentity(name or derived.name, version or derived.version)


def _registry() -> Registry:
    """The registry the server's environment names (MLFLOW_TRACKING_URI and credentials)."""
    uri = os.environ.get(c.TRACKING_URI_ENV)
    if not uri:
        raise ValueError(
            f"{c.TRACKING_URI_ENV} is not set: a models:/ URI needs the registry it is in"
        )
    return open_registry(uri, Credentials.from_mapping(os.environ))


def fetch_pinned_version(name: str, version: str, cache: ModelCache | None) -> LocalModel:
    """The files of ``models:/NAME/VERSION`` on local disk (under ``$TMPDIR``).

    From the registry when it answers (and then kept in ``cache``, if any). When it cannot
    be reached (connection refused, timeout, HTTP 5xx: :class:`RegistryUnavailable`) from
    ``cache``: the newest entry of exactly this name and version whose files all match
    its manifest. Any other registry error (no such version, access denied) is raised as
    it is: the cache stands in for an unreachable registry, not for a wrong answer.
    """
    import mlflow.artifacts

    registry = _registry()
    target = Path(tempfile.mkdtemp(prefix="modelyard-model-"))
    try:
        registry.get_version(name, int(version))
        path = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(target / "download")
            )
        )
    except RegistryUnavailable as error:
        return _from_cache(registry, name, version, cache, target, error)
    except Exception as error:
        # A download that fails after the registry answered: an outage that began in
        # between counts as one; anything else is the download's own failure.
        try:
            registry.get_version(name, int(version))
        except RegistryUnavailable as unreachable:
            return _from_cache(registry, name, version, cache, target, unreachable)
        except Exception:
            pass
        raise error
    if cache is None:
        return LocalModel(path, "registry")
    try:
        entry = cache.publish(registry_key(registry.tracking_uri), name, version, path)
    except Exception as error:
        # Serving does not depend on the cache: a failed write is logged, not fatal.
        logger.error(
            "model cache: could not store %s version %s in %s: %s",
            name,
            version,
            cache.display_url,
            error,
        )
        return LocalModel(path, "registry")
    return LocalModel(path, "registry", entry.digest)


def _from_cache(
    registry: Registry,
    name: str,
    version: str,
    cache: ModelCache | None,
    target: Path,
    error: RegistryUnavailable,
) -> LocalModel:
    what = f"model {name} version {version}"
    if cache is None:
        raise ModelUnavailable(
            f"RegistryUnavailable: the model registry at {registry.display_uri} cannot be "
            f"reached ({error}) and no model cache is configured "
            f"({c.ServerEnv.MODEL_CACHE}): {what} cannot be loaded"
        ) from error
    logger.warning(
        "the model registry at %s cannot be reached (%s): loading %s from the model cache %s",
        registry.display_uri,
        error,
        what,
        cache.display_url,
    )
    try:
        entry = cache.restore(registry_key(registry.tracking_uri), name, version, target)
    except Exception as miss:  # CacheMiss, or the cache itself cannot be read
        raise ModelUnavailable(
            f"RegistryUnavailable: the model registry at {registry.display_uri} cannot be "
            f"reached ({error}), and the model cache has nothing to load instead: {miss}"
        ) from error
    logger.warning(
        "serving %s from the model cache (digest %s, cached %s)", what, entry.digest, entry.created
    )
    return LocalModel(Path(entry.url), "cache", entry.digest)


class ServedModel:
    """An MLflow pyfunc model plus the fastest correct way to call it.

    For scikit-learn models the estimator is called directly: the input is already checked
    and converted to the signature's types, so MLflow's per-call schema enforcement would
    only repeat that work (it costs more than the prediction for a small model).
    """

    def __init__(
        self,
        pyfunc_model: Any,
        identity: ModelIdentity,
        source: ModelSource = "uri",
        digest: str | None = None,
    ) -> None:
        self.pyfunc_model = pyfunc_model
        self.identity = identity
        self.source = source
        self.digest = digest
        self.schema = InputSchema.from_mlflow(pyfunc_model.metadata.get_input_schema())
        self._predict_raw: Callable[[Any], Any] | None = None
        self._wants_frame = True
        flavor = pyfunc_model.metadata.flavors.get("python_function", {})
        if flavor.get("loader_module") == "mlflow.sklearn" and self.schema.columns:
            estimator = pyfunc_model.get_raw_model()
            method = getattr(estimator, flavor.get("predict_fn", "predict"), None)
            if callable(method):
                self._predict_raw = method
                # An estimator fitted on a DataFrame checks feature names; one fitted on
                # arrays warns when given names. Give each what it was fitted on.
                self._wants_frame = hasattr(estimator, "feature_names_in_")

    @classmethod
    def load(
        cls,
        uri: str,
        name: str | None = None,
        version: str | None = None,
        *,
        allow_pickle: bool = False,
        cache: ModelCache | None = None,
    ) -> ServedModel:
        """Load the model at ``uri``; one whose format runs code only with
        ``allow_pickle`` (:class:`UnsafeModelFormat` before anything is deserialized).

        A pinned registry version (``models:/NAME/VERSION``) is downloaded first and, with
        a ``cache``, kept there; when the registry cannot be reached it comes from the
        cache instead (:func:`fetch_pinned_version`). The format check reads the same
        MLmodel file either way."""
        import mlflow.models
        import mlflow.pyfunc

        pinned = _PINNED_VERSION.match(uri)
        if pinned is None:
            identity = resolve_model_identity(uri, name, version)
            # Only the MLmodel file is read here, not the model's files.
            flavors = mlflow.models.get_model_info(uri).flavors
            local: LocalModel | None = None
        else:
            identity = ModelIdentity(name or pinned["name"], version or pinned["version"])
            local = fetch_pinned_version(pinned["name"], pinned["version"], cache)
            flavors = mlflow.models.Model.load(str(local.path)).flavors
        check_model_format(
            flavors,
            allow_pickle=allow_pickle,
            model=f"model {identity.name} version {identity.version}",
        )
        if local is None:
            logger.info("loading model %s (%s version %s)", uri, identity.name, identity.version)
            return cls(mlflow.pyfunc.load_model(uri), identity)
        logger.info(
            "loading model %s (%s version %s) from the %s%s",
            uri,
            identity.name,
            identity.version,
            "model cache, the registry being unreachable"
            if local.source == "cache"
            else local.source,
            f", digest {local.digest}" if local.digest else "",
        )
        return cls(mlflow.pyfunc.load_model(str(local.path)), identity, local.source, local.digest)

    def predict(self, columns: dict[str, Array]) -> Array:
        """Predict on validated columns (signature order); one output row per input row."""
        if self._predict_raw is not None:
            arrays = list(columns.values())
            if len({a.dtype for a in arrays}) == 1 and arrays[0].dtype.kind in "biuf":
                # One 2-D block: a DataFrame of N separate columns costs more to build
                # (and for sklearn to convert back) than the prediction of a small model.
                matrix = np.column_stack(arrays)
                features: Any = (
                    pd.DataFrame(matrix, columns=list(columns), copy=False)
                    if self._wants_frame
                    else matrix
                )
            else:
                features = pd.DataFrame(columns, copy=False)
            result = self._predict_raw(features)
        else:
            result = self.pyfunc_model.predict(pd.DataFrame(columns, copy=False))
        return as_prediction_array(result)


def as_prediction_array(result: Any) -> Array:
    if isinstance(result, pd.DataFrame | pd.Series):
        return np.asarray(result.to_numpy())
    return np.asarray(result)


def predictions_to_json(predictions: Array) -> list[Any]:
    """JSON values as ``mlflow models serve`` writes them (numpy scalars -> Python)."""
    values: list[Any] = predictions.tolist()
    return values
