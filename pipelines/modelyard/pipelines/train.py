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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from modelyard._version import __version__
from modelyard.core import contracts as c
from modelyard.core.artifacts import download_version
from modelyard.core.registry import Credentials, NewVersion, Registry, open_registry
from modelyard.pipelines.context import StepContext
from modelyard.pipelines.lake import Partition, read_partition, select_partitions
from modelyard.pipelines.registry_accounts import grant_model, model_editors

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
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
    if os.environ.get(c.PipelineEnv.CODE_VERSION):
        return os.environ[c.PipelineEnv.CODE_VERSION]
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


class TrackedRun:
    """One MLflow run, logged through a client bound to the step's tracking URI: nothing
    here sets MLflow's process-wide tracking URI or active run."""

    def __init__(
        self,
        ctx: StepContext,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        run_id: str | None = None,
    ):
        """A new run in ``experiment``, or (``run_id``) one that exists."""
        from mlflow import MlflowClient

        self.client = MlflowClient(
            tracking_uri=ctx.settings.tracking_uri, registry_uri=ctx.settings.tracking_uri
        )
        if run_id is not None:
            existing = self.client.get_run(run_id)
            self.experiment_id: str = existing.info.experiment_id
            self.run_id: str = run_id
            self.artifact_uri: str = existing.info.artifact_uri
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            # A local SQLite store keeps artifacts next to it; a tracking server decides.
            location = None
            if ctx.settings.tracking_uri.startswith("sqlite:"):
                location = (ctx.settings.home / "artifacts").as_uri()
            experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.experiment_id = experiment_id
        self.run_id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri

    def model(self, local_dir: Path, name: str = "model") -> tuple[str, str]:
        """Log a saved model as an MLflow 3 logged model of this run: its id, and where
        its files are (the source a registered version points to)."""
        logged = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id
        )
        try:
            self.client.log_model_artifacts(logged.model_id, str(local_dir))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(logged.model_id, "READY")
        return str(logged.model_id), str(logged.artifact_location)

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def metrics(self, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()]
        )

    def dataset(self, dataset: Any, context: str) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        entity = Dataset(**dataset.to_dict())
        tag = InputTag(c.DATASET_CONTEXT_TAG, context)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=[tag])])

    def finish(self, succeeded: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if succeeded else "FAILED")


@dataclass(frozen=True)
class TrainingData:
    """A date window of feature partitions split into training and holdout."""

    training: list[tuple[Partition, pd.DataFrame]]
    holdout: list[tuple[Partition, pd.DataFrame]]
    x_train: pd.DataFrame
    y_train: pd.Series
    x_holdout: pd.DataFrame
    y_holdout: pd.Series
    label: str
    numeric_features: list[str]
    categorical_features: list[str]


def load_training_data(
    ctx: StepContext,
    features: str,
    numeric_features: list[str],
    categorical_features: list[str],
    label: str,
    days: int,
    holdout_days: int,
) -> TrainingData:
    training, holdout = _load_window(ctx, features, days, holdout_days)
    train_frame = pd.concat([frame for _, frame in training], ignore_index=True)
    holdout_frame = pd.concat([frame for _, frame in holdout], ignore_index=True)
    return TrainingData(
        training,
        holdout,
        _model_inputs(train_frame, numeric_features, categorical_features),
        train_frame[label].astype(bool),
        _model_inputs(holdout_frame, numeric_features, categorical_features),
        holdout_frame[label].astype(bool),
        label,
        numeric_features,
        categorical_features,
    )


def run_tags(ctx: StepContext) -> dict[str, str]:
    """The ``modelyard.*`` tags of every run a pipeline step logs."""
    return {
        c.RunTags.CODE_VERSION: code_version(),
        c.RunTags.PIPELINE: ctx.pipeline,
        c.RunTags.PIPELINE_RUN: ctx.run_id,
        c.RunTags.RUN_DATE: ctx.run_date.isoformat(),
    }


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
    estimator = estimator or EstimatorSettings()
    data = load_training_data(
        ctx, features, numeric_features, categorical_features, label, days, holdout_days
    )
    model = build_model_pipeline(numeric_features, categorical_features, estimator, seed)
    run = TrackedRun(
        ctx,
        experiment or model_name,
        run_name=f"{ctx.pipeline}-{ctx.run_date.isoformat()}",
        tags=run_tags(ctx),
    )
    succeeded = False
    try:
        params = {
            "estimator": estimator.kind,
            **{f"estimator.{k}": v for k, v in estimator.parameters.items()},
            "features_dataset": features,
            "days": days,
            "holdout_days": holdout_days,
            "seed": seed,
        }

        def fit(model: Any) -> Any:
            if search is not None:
                return _tune(run, model, search, data.x_train, data.y_train, seed)
            return model.fit(data.x_train, data.y_train)

        result = fit_and_log(run, data, model, estimator.kind, params, fit)
        succeeded = True
    finally:
        run.finish(succeeded)
    return {**result, "model_name": model_name}


def fit_and_log(
    run: TrackedRun,
    data: TrainingData,
    model: Any,
    estimator_kind: str,
    params: dict[str, Any],
    fit: Any,
) -> dict[str, Any]:
    """Log the parameters and datasets, fit (``fit(model)`` returns the fitted model),
    score the holdout, log the model and the drift reference: a training step's result
    (what ``register_and_promote`` registers), without the model name."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    run.params({**params, "training_rows": len(data.x_train), "holdout_rows": len(data.x_holdout)})
    for partition, frame in data.training:
        run.dataset(_partition_dataset(partition, frame, data.label), c.TRAINING_CONTEXT)
    for partition, frame in data.holdout:
        run.dataset(_partition_dataset(partition, frame, data.label), c.HOLDOUT_CONTEXT)
    model = fit(model)
    metrics = holdout_metrics(model, data.x_holdout, data.y_holdout)
    run.metrics({f"holdout_{name}": value for name, value in metrics.items()})

    example = data.x_train.head(5)
    signature = infer_signature(example, model.predict(example))
    with tempfile.TemporaryDirectory(prefix="modelyard-model-") as directory:
        path = Path(directory) / "model"
        mlflow.sklearn.save_model(
            model,
            str(path),
            serialization_format="skops",
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            skops_trusted_types=PIPELINE_TRUSTED_TYPES
            + (TREE_TRUSTED_TYPES if estimator_kind == "random_forest" else []),
        )
        model_id, model_source = run.model(path)
    _log_reference(run, data.x_train)
    logger.info("run %s: holdout roc_auc %.4f", run.run_id, metrics["roc_auc"])
    return {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "model_uri": f"models:/{model_id}",
        "model_id": model_id,
        "model_source": model_source,
        "holdout_roc_auc": round(metrics["roc_auc"], 4),
        "training_partitions": [p.url for p, _ in data.training],
        "holdout_partitions": [p.url for p, _ in data.holdout],
        "rows_used": len(data.x_train) + len(data.x_holdout),
        "label": data.label,
        "numeric_features": data.numeric_features,
        "categorical_features": data.categorical_features,
    }


def _pip_requirements() -> list[str]:
    # Stated rather than inferred: mlflow's inference loads the model in a subprocess,
    # seconds on every run, to arrive at these same packages.
    from importlib.metadata import version

    packages = ["mlflow", "scikit-learn", "skops", "pandas", "numpy", "pyarrow"]
    return [f"{package}=={version(package)}" for package in packages]


def _partition_dataset(partition: Partition, frame: pd.DataFrame, label: str) -> Any:
    """The partition as an MLflow dataset whose source is its fsspec URL (the lineage)."""
    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():
        # mlflow registers two local-file source classes and warns that it picked one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        return from_pandas(
            frame,
            source=partition.url,
            targets=label,
            name=f"{partition.dataset}/date={partition.date.isoformat()}",
        )


def _log_reference(run: TrackedRun, training_inputs: pd.DataFrame) -> None:
    sample = training_inputs
    if len(sample) > c.REFERENCE_MAX_ROWS:
        sample = sample.sample(c.REFERENCE_MAX_ROWS, random_state=c.REFERENCE_SAMPLE_SEED)
    folder, _, file = c.REFERENCE_ARTIFACT.rpartition("/")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / file
        sample.reset_index(drop=True).to_parquet(path, index=False)
        run.client.log_artifact(run.run_id, str(path), artifact_path=folder)


def _tune(
    run: TrackedRun, model: Any, search: SearchSettings, x: pd.DataFrame, y: pd.Series, seed: int
) -> Any:
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
    run.params(
        {
            **{f"best.{name}": value for name, value in best.items()},
            "search.candidates": len(searcher.cv_results_["params"]),
        }
    )
    run.metrics({f"cv_best_{search.scoring}": float(searcher.best_score_)})
    return searcher.best_estimator_


def register_and_promote(
    ctx: StepContext,
    train_step: str = "train",
    metric: Literal["roc_auc", "accuracy", "f1"] = "roc_auc",
    margin: float = 0.0,
) -> dict[str, Any]:
    """Step: register the model ``train_step`` logged, alias it ``challenger``, and move
    ``champion`` to it if it beats the champion on this run's holdout by ``margin``."""
    trained = ctx.upstream.get(train_step)
    if not trained:
        raise ValueError(f"register_and_promote needs the result of step {train_step!r}")
    registry = step_registry(ctx)
    name = str(trained["model_name"])
    registry.create_registered_model(name)
    created = registry.create_version(
        NewVersion(
            name,
            str(trained["model_source"]),
            str(trained["run_id"]),
            tags={
                c.RunTags.PIPELINE: ctx.pipeline,
                c.RunTags.RUN_ID: str(trained["run_id"]),
                # Lineage a step adds (a tuning step: its study and best trial).
                **{str(k): str(v) for k, v in (trained.get("version_tags") or {}).items()},
            },
            model_id=str(trained["model_id"]),
        )
    )
    version = registry.wait_ready(name, created.version).version
    editors = model_editors()
    if editors:  # a registry with users: the operator and drift checks may tag it
        granted = grant_model(ctx.settings.tracking_uri, name, editors)
        if granted:
            logger.info(
                "%s: granted %s",
                name,
                ", ".join(
                    f"{u} {c.RegistryUsers.MODEL_PERMISSIONS.get(u, 'EDIT')}" for u in granted
                ),
            )
        # ...and the drift checks log their runs in the training run's experiment.
        writers = [u for u in editors if u in c.RegistryUsers.RUN_WRITERS]
        if writers:
            experiment = str(trained["experiment_id"])
            granted = grant_model(
                ctx.settings.tracking_uri, experiment, writers, resource_type="experiment"
            )
            if granted:
                logger.info("experiment %s: granted EDIT to %s", experiment, ", ".join(granted))
    registry.set_alias(name, CHALLENGER, version)

    challenger_score = _holdout_score(registry, name, version, trained, metric)
    champion = registry.alias_version(name, CHAMPION)
    champion_score: float | None = None
    if champion is None:
        promote, reason = True, "first version: no champion yet"
    else:
        champion_score = _holdout_score(registry, name, champion.version, trained, metric)
        promote = challenger_score >= champion_score + margin
        comparison = ">=" if promote else "<"
        reason = (
            f"{metric} {challenger_score:.4f} {comparison} champion v{champion.version} "
            f"{champion_score:.4f} + margin {margin:g}"
        )
    registry.set_version_tag(name, version, c.RunTags.PROMOTION, reason)
    if promote:
        registry.set_alias(name, CHAMPION, version)
    logger.info("%s v%s: %s -> %s", name, version, reason, CHAMPION if promote else CHALLENGER)
    return {
        "model_name": name,
        "version": str(version),
        "promoted": promote,
        "reason": reason,
        f"challenger_{metric}": round(challenger_score, 4),
        f"champion_{metric}": None if champion_score is None else round(champion_score, 4),
    }


def step_registry(ctx: StepContext) -> Registry:
    """The run's registry, with the credentials of the step's environment."""
    return open_registry(ctx.settings.tracking_uri, Credentials.from_mapping(os.environ))


def _holdout_score(
    registry: Registry, name: str, version: int, trained: dict[str, Any], metric: str
) -> float:
    """Score a registered model version on the holdout partitions the training run used."""
    import mlflow.sklearn

    with tempfile.TemporaryDirectory(prefix="modelyard-score-") as directory:
        local = download_version(registry, name, version, Path(directory))
        model = mlflow.sklearn.load_model(str(local))
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
