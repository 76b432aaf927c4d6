"""Training and promotion steps: scikit-learn, tracked and registered in MLflow.

``train_model`` fits a scikit-learn Pipeline on the feature partitions of a date window
(the newest ``holdout_days`` held out), optionally tuned with a search CV, and logs one
MLflow run: parameters, holdout metrics, the model with signature and input example,
each partition used as a dataset input (source = the partition's fsspec URL, so the
lineage names exactly the data used), ``reference/data.parquet`` for the drift check,
and the ``modelyard.*`` tags (docs/contracts.md).

``register_and_promote`` registers that model as a new version with alias
``challenger`` and moves ``champion`` to it only if it beats the current champion on the
same holdout by the configured margin (the first version becomes champion).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from modelyard._version import __version__
from modelyard.pipelines.context import StepContext
from modelyard.pipelines.lake import Partition, read_partition, select_partitions

logger = logging.getLogger(__name__)

CODE_VERSION_ENV = "MODELYARD_CODE_VERSION"
REFERENCE_MAX_ROWS = 200_000
REFERENCE_SEED = 0
# mlflow saves scikit-learn models with skops, which loads only trusted types. SimpleImputer
# keeps the numpy dtype it was fitted on; tree ensembles hold sklearn's Cython Tree objects.
# Both are plain data, not code.
PIPELINE_TRUSTED_TYPES = ["numpy.dtype"]
TREE_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class EstimatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["logistic_regression", "random_forest"] = "logistic_regression"
    parameters: dict[str, Any] = Field(default_factory=dict)


class SearchSettings(BaseModel):
    """Automatic model tuning with scikit-learn's GridSearchCV or RandomizedSearchCV.

    ``space`` maps estimator parameter names (without the ``model__`` prefix) to the
    values to try.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["grid", "random"] = "grid"
    space: dict[str, list[Any]] = Field(min_length=1)
    cv: int = Field(default=3, ge=2)
    scoring: str = "roc_auc"
    iterations: int = Field(default=10, ge=1, description="Candidates for the random search.")


def code_version() -> str:
    """$MODELYARD_CODE_VERSION, else the git commit of the working directory, else the
    package version (inside an image, where there is no git checkout)."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        if commit:
            return commit
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def build_model_pipeline(
    numeric: list[str], categorical: list[str], estimator: EstimatorSettings, seed: int
) -> Any:
    """Imputation and scaling of numeric columns, one-hot categories, then the estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            ),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    model: Any
    if estimator.kind == "logistic_regression":
        model = LogisticRegression(max_iter=1000, random_state=seed, **estimator.parameters)
    else:
        model = RandomForestClassifier(random_state=seed, n_jobs=1, **estimator.parameters)
    return Pipeline([("preprocess", preprocess), ("model", model)])


def holdout_metrics(model: Any, features: pd.DataFrame, labels: pd.Series) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    probabilities = model.predict_proba(features)[:, 1]
    predictions = probabilities >= 0.5
    return {
        "roc_auc": float(roc_auc_score(labels, probabilities)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(f1_score(labels, predictions)),
        "log_loss": float(log_loss(labels, probabilities, labels=[False, True])),
    }


def _model_inputs(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    # One dtype per kind, so the signature does not depend on which day had nulls.
    inputs = frame[[*numeric, *categorical]].copy()
    for column in numeric:
        inputs[column] = inputs[column].astype("float64")
    for column in categorical:
        inputs[column] = inputs[column].astype(str).astype(object)
    return inputs


def _load_window(
    ctx: StepContext, dataset: str, days: int, holdout_days: int
) -> tuple[list[tuple[Partition, pd.DataFrame]], list[tuple[Partition, pd.DataFrame]]]:
    partitions = select_partitions(ctx.lake, dataset, ctx.run_date, days)
    if len(partitions) <= holdout_days:
        raise ValueError(
            f"{dataset}: {len(partitions)} partition(s) in the {days} days to {ctx.run_date}; "
            f"need more than holdout_days={holdout_days}"
        )
    loaded = [(partition, read_partition(partition)) for partition in partitions]
    return loaded[:-holdout_days], loaded[-holdout_days:]


def _setup_mlflow(ctx: StepContext, experiment: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(ctx.settings.tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        # A local SQLite store keeps artifacts next to it; a tracking server decides itself.
        location = None
        if ctx.settings.tracking_uri.startswith("sqlite:"):
            location = (ctx.settings.home / "artifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)


def train_model(
    ctx: StepContext,
    features: str,
    numeric_features: list[str],
    categorical_features: list[str],
    label: str,
    model_name: str,
    experiment: str | None = None,
    days: int = 7,
    holdout_days: int = 1,
    estimator: EstimatorSettings | None = None,
    search: SearchSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Step: fit, evaluate on the holdout, and log the run; see the module docstring."""
    import mlflow
    from mlflow.models import infer_signature

    estimator = estimator or EstimatorSettings()
    training, holdout = _load_window(ctx, features, days, holdout_days)
    train_frame = pd.concat([frame for _, frame in training], ignore_index=True)
    holdout_frame = pd.concat([frame for _, frame in holdout], ignore_index=True)
    x_train = _model_inputs(train_frame, numeric_features, categorical_features)
    y_train = train_frame[label].astype(bool)
    x_holdout = _model_inputs(holdout_frame, numeric_features, categorical_features)
    y_holdout = holdout_frame[label].astype(bool)

    model = build_model_pipeline(numeric_features, categorical_features, estimator, seed)
    _setup_mlflow(ctx, experiment or model_name)
    with mlflow.start_run(run_name=f"{ctx.pipeline}-{ctx.run_date.isoformat()}") as run:
        mlflow.set_tags(
            {
                "modelyard.code_version": code_version(),
                "modelyard.pipeline": ctx.pipeline,
                "modelyard.pipeline_run": ctx.run_id,
                "modelyard.run_date": ctx.run_date.isoformat(),
            }
        )
        mlflow.log_params(
            {
                "estimator": estimator.kind,
                **{f"estimator.{k}": v for k, v in estimator.parameters.items()},
                "features_dataset": features,
                "days": days,
                "holdout_days": holdout_days,
                "seed": seed,
                "training_rows": len(x_train),
                "holdout_rows": len(x_holdout),
            }
        )
        for partition, frame in training:
            _log_partition(partition, frame, label, "training")
        for partition, frame in holdout:
            _log_partition(partition, frame, label, "holdout")

        if search is not None:
            model = _tune(model, search, x_train, y_train, seed)
        else:
            model.fit(x_train, y_train)
        metrics = holdout_metrics(model, x_holdout, y_holdout)
        mlflow.log_metrics({f"holdout_{name}": value for name, value in metrics.items()})

        example = x_train.head(5)
        signature = infer_signature(example, model.predict(example))
        model_info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            skops_trusted_types=PIPELINE_TRUSTED_TYPES
            + (TREE_TRUSTED_TYPES if estimator.kind == "random_forest" else []),
        )
        _log_reference(x_train)
    logger.info("run %s: holdout roc_auc %.4f", run.info.run_id, metrics["roc_auc"])
    return {
        "run_id": run.info.run_id,
        "model_uri": model_info.model_uri,
        "model_name": model_name,
        "holdout_roc_auc": round(metrics["roc_auc"], 4),
        "training_partitions": [p.url for p, _ in training],
        "holdout_partitions": [p.url for p, _ in holdout],
        "rows_used": len(x_train) + len(x_holdout),
        "label": label,
        "numeric_features": numeric_features,
        "categorical_features": categorical_features,
    }


def _pip_requirements() -> list[str]:
    # Stated rather than inferred: mlflow's inference loads the model in a subprocess,
    # seconds on every run, to arrive at these same packages.
    from importlib.metadata import version

    packages = ["mlflow", "scikit-learn", "skops", "pandas", "numpy", "pyarrow"]
    return [f"{package}=={version(package)}" for package in packages]


def _log_partition(partition: Partition, frame: pd.DataFrame, label: str, context: str) -> None:
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():
        # mlflow registers two local-file source classes and warns that it picked one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        dataset = from_pandas(
            frame,
            source=partition.url,
            targets=label,
            name=f"{partition.dataset}/date={partition.date.isoformat()}",
        )
    mlflow.log_input(dataset, context=context)


def _log_reference(training_inputs: pd.DataFrame) -> None:
    import mlflow

    sample = training_inputs
    if len(sample) > REFERENCE_MAX_ROWS:
        sample = sample.sample(REFERENCE_MAX_ROWS, random_state=REFERENCE_SEED)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "data.parquet"
        sample.reset_index(drop=True).to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="reference")


def _tune(model: Any, search: SearchSettings, x: pd.DataFrame, y: pd.Series, seed: int) -> Any:
    import mlflow
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, StratifiedKFold

    space = {f"model__{name}": values for name, values in search.space.items()}
    folds = StratifiedKFold(n_splits=search.cv, shuffle=True, random_state=seed)
    searcher: Any
    if search.method == "grid":
        searcher = GridSearchCV(model, space, cv=folds, scoring=search.scoring, n_jobs=1)
    else:
        searcher = RandomizedSearchCV(
            model,
            space,
            n_iter=search.iterations,
            cv=folds,
            scoring=search.scoring,
            random_state=seed,
            n_jobs=1,
        )
    searcher.fit(x, y)
    best = {name.removeprefix("model__"): value for name, value in searcher.best_params_.items()}
    mlflow.log_params({f"best.{name}": value for name, value in best.items()})
    mlflow.log_metric(f"cv_best_{search.scoring}", float(searcher.best_score_))
    mlflow.log_param("search.candidates", len(searcher.cv_results_["params"]))
    return searcher.best_estimator_


def register_and_promote(
    ctx: StepContext,
    train_step: str = "train",
    metric: Literal["roc_auc", "accuracy", "f1"] = "roc_auc",
    margin: float = 0.0,
) -> dict[str, Any]:
    """Step: register the model ``train_step`` logged, alias it ``challenger``, and move
    ``champion`` to it if it beats the champion on this run's holdout by ``margin``."""
    import mlflow
    from mlflow import MlflowClient

    trained = ctx.upstream.get(train_step)
    if not trained:
        raise ValueError(f"register_and_promote needs the result of step {train_step!r}")
    mlflow.set_tracking_uri(ctx.settings.tracking_uri)
    client = MlflowClient()
    name = str(trained["model_name"])
    version = mlflow.register_model(
        trained["model_uri"],
        name,
        tags={"modelyard.pipeline": ctx.pipeline, "modelyard.run_id": str(trained["run_id"])},
    )
    client.set_registered_model_alias(name, "challenger", version.version)

    challenger_score = _holdout_score(f"models:/{name}/{version.version}", trained, metric)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        champion = None
    champion_score: float | None = None
    if champion is None:
        promote, reason = True, "first version: no champion yet"
    else:
        champion_score = _holdout_score(f"models:/{name}/{champion.version}", trained, metric)
        promote = challenger_score >= champion_score + margin
        comparison = ">=" if promote else "<"
        reason = (
            f"{metric} {challenger_score:.4f} {comparison} champion v{champion.version} "
            f"{champion_score:.4f} + margin {margin:g}"
        )
    client.set_model_version_tag(name, version.version, "modelyard.promotion", reason)
    if promote:
        client.set_registered_model_alias(name, "champion", version.version)
    logger.info(
        "%s v%s: %s -> %s", name, version.version, reason, "champion" if promote else "challenger"
    )
    return {
        "model_name": name,
        "version": version.version,
        "promoted": promote,
        "reason": reason,
        f"challenger_{metric}": round(challenger_score, 4),
        f"champion_{metric}": None if champion_score is None else round(champion_score, 4),
    }


def _holdout_score(model_uri: str, trained: dict[str, Any], metric: str) -> float:
    """Score a registered model on the holdout partitions the training run used."""
    import mlflow

    model = mlflow.sklearn.load_model(model_uri)
    frames = [read_partition(_partition_from_url(url)) for url in trained["holdout_partitions"]]
    holdout = pd.concat(frames, ignore_index=True)
    inputs = _model_inputs(holdout, trained["numeric_features"], trained["categorical_features"])
    labels = holdout[trained["label"]].astype(bool)
    return holdout_metrics(model, inputs, labels)[metric]


def _partition_from_url(url: str) -> Partition:
    import datetime as dt

    base, _, date_part = url.rstrip("/").rpartition("/date=")
    lake, _, dataset = base.rpartition("/")
    return Partition(lake, dataset, dt.date.fromisoformat(date_part))
