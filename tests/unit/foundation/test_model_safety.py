"""Which model formats load without running code (docs/security.md)."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.core.model_safety import UnsafeModelFormat, check_model_format, unsafe_format


def sklearn(fmt: str, trusted: list[str] | None = None) -> dict[str, Any]:
    return {
        "python_function": {"loader_module": "mlflow.sklearn"},
        "sklearn": {"serialization_format": fmt, "skops_trusted_types": trusted},
    }


@pytest.mark.parametrize(
    "flavors",
    [
        sklearn("skops"),
        sklearn("skops", ["numpy.dtype", "sklearn.tree._tree.Tree"]),
        {"python_function": {"loader_module": "mlflow.onnx"}, "onnx": {}},
    ],
)
def test_data_formats_load(flavors: dict[str, Any]) -> None:
    assert unsafe_format(flavors) is None
    check_model_format(flavors, allow_pickle=False)


@pytest.mark.parametrize(
    ("flavors", "named"),
    [
        (sklearn("cloudpickle"), "scikit-learn model saved with cloudpickle"),
        (sklearn("pickle"), "saved with pickle"),
        (sklearn("skops", ["numpy.dtype", "builtins.eval"]), "declares builtins.eval trusted"),
        (
            {
                "python_function": {
                    "loader_module": "mlflow.pyfunc.model",
                    "cloudpickle_version": "3",
                }
            },
            "custom python_function model (cloudpickle)",
        ),
        ({"python_function": {"loader_module": "mlflow.pytorch"}}, "mlflow.pytorch"),
        ({"keras": {}}, "without a python_function flavor"),
    ],
)
def test_formats_that_run_code_are_refused_unless_allowed(
    flavors: dict[str, Any], named: str
) -> None:
    with pytest.raises(UnsafeModelFormat) as refused:
        check_model_format(flavors, allow_pickle=False, model="model churn version 3")
    message = str(refused.value)
    assert message.startswith("UnsafeModelFormat: model churn version 3 is ")
    assert named in message and "spec.server.allowPickle: true" in message
    check_model_format(flavors, allow_pickle=True)
