"""Which models may be loaded (docs/security.md, "safe model loading").

Loading a model runs whatever its serialization runs: a pickle or cloudpickle file is
code. Whoever may register a model version could otherwise run code in the model servers
and drift checks, which hold registry credentials. So the server and the drift check
load only formats that carry data, not code, unless the ModelDeployment says it trusts
everyone with write access to the registry (``spec.server.allowPickle``):

- scikit-learn models saved with skops (MLflow's default), whose declared trusted types
  are all numpy, scikit-learn or scipy types (skops refuses every type not declared; a
  declaration of another module's type, which the model itself carries, is refused here);
- ONNX and XGBoost models (their own file formats).

Everything else (pickle, cloudpickle, a custom ``python_function`` model, flavors not
listed) is refused with :class:`UnsafeModelFormat`, before anything is deserialized.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: The reason on the ModelDeployment's conditions, and the first word of the server's
#: termination message (the operator reads it there).
REASON: Final = "UnsafeModelFormat"
#: Declared skops trusted types must come from these modules.
SAFE_TYPE_PREFIXES: Final = ("numpy.", "sklearn.", "scipy.")
#: python_function loaders that read data formats, not code.
DATA_LOADERS: Final = frozenset({"mlflow.onnx", "mlflow.xgboost"})
FIX: Final = (
    "save it with skops (mlflow.sklearn.log_model's default, trusted types from numpy, "
    "scikit-learn or scipy only), or set spec.server.allowPickle: true to load it anyway "
    "(that trusts everyone who may write to the registry)"
)


class UnsafeModelFormat(Exception):
    """The model would run code when loaded; the message names the flavor and the fix."""

    reason = REASON


def unsafe_format(flavors: Mapping[str, Any]) -> str | None:
    """What makes a model with these MLmodel ``flavors`` unsafe to load, or None."""
    pyfunc = flavors.get("python_function") or {}
    loader = pyfunc.get("loader_module")
    if loader == "mlflow.sklearn":
        sklearn = flavors.get("sklearn") or {}
        fmt = sklearn.get("serialization_format", "cloudpickle")
        if fmt != "skops":
            return f"a scikit-learn model saved with {fmt}"
        foreign = [
            str(t)
            for t in sklearn.get("skops_trusted_types") or []
            if not str(t).startswith(SAFE_TYPE_PREFIXES)
        ]
        if foreign:
            return f"a skops model that declares {', '.join(sorted(foreign))} trusted"
        return None
    if loader in DATA_LOADERS:
        return None
    if loader == "mlflow.pyfunc.model":
        return "a custom python_function model (cloudpickle)"
    if loader is None:
        return "a model without a python_function flavor"
    return f"a model whose loader {loader} is not known to read data only"


def check_model_format(
    flavors: Mapping[str, Any], *, allow_pickle: bool, model: str = "the model"
) -> None:
    """Raise :class:`UnsafeModelFormat` unless ``flavors`` is safe or pickle is allowed."""
    if allow_pickle:
        return
    problem = unsafe_format(flavors)
    if problem is not None:
        raise UnsafeModelFormat(
            f"{REASON}: {model} is {problem}, which runs code when loaded; {FIX}"
        )
