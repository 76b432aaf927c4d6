"""Tuning step: Optuna searches a model's hyperparameters, with N workers sharing one study.

``tune_model`` is ``train_model`` with a search space instead of fixed parameters. Each
worker (``parallelism: N`` in the YAML; in the cluster the pods of an Indexed Job) runs
trials of one Optuna study kept in a shared storage (PostgreSQL; a local run may use
SQLite): TPE proposes the parameters, a trial is a cross-validation whose folds report
to a median pruner, which stops a trial that is clearly worse than the others.

The budget is exact: worker 0 creates the study and puts ``trials`` waiting trials in
it; a worker takes one by moving it from WAITING to RUNNING, which only one can do, and
stops when none is left (or at ``timeout_seconds``). A worker that dies mid-trial stops
sending heartbeats; another one marks its trial failed: a killed pod loses that trial
and nothing else, and a restarted one (Kubernetes retries the index) goes on with the
study. Running the pipeline again for the same date continues the same study.

MLflow: worker 0 opens a parent run for the study; every trial is a child run
(parameters, fold scores, duration, COMPLETE/PRUNED/FAIL). When no trial is left, worker
0 waits for the running ones, logs the best parameters on the parent run, fits the model
with them on the whole training window, logs it there with its datasets, and returns
what ``register_and_promote`` needs, with the study and the best trial as lineage tags.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from modelyard.core import contracts as c
from modelyard.core.redaction import redact_uri
from modelyard.pipelines.context import StepContext
from modelyard.pipelines.definition import pod_labels
from modelyard.pipelines.train import (
    EstimatorSettings,
    TrackedRun,
    TrainingData,
    build_model_pipeline,
    fit_and_log,
    load_training_data,
    run_tags,
)

logger = logging.getLogger(__name__)

#: Study user attributes.
_PARENT_RUN = "mlflow_parent_run_id"
_BUDGET = "budget"
#: Trial user attributes.
_CHILD_RUN = "mlflow_run_id"
_WORKER = "worker"
_WORKER_PID = "worker_pid"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Scalar = str | int | float | bool | None


class _Param(_Strict):
    when: dict[str, Scalar | list[Scalar]] | None = Field(
        default=None,
        description="Only suggested when these earlier parameters have these values.",
    )


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low >= self.high or (self.log and self.low <= 0):
            raise ValueError("needs low < high (and low > 0 with log: true)")
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low >= self.high or (self.log and self.low <= 0):
            raise ValueError("needs low < high (and low > 0 with log: true)")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _check_space(space: dict[str, Param]) -> dict[str, Param]:
    seen: dict[str, Param] = {}
    for name, param in space.items():
        for other, values in (param.when or {}).items():
            if other not in seen:
                raise ValueError(
                    f"{name}: 'when' names {other!r}, which is not a parameter before it"
                )
            earlier = seen[other]
            wanted = values if isinstance(values, list) else [values]
            if isinstance(earlier, CategoricalParam):
                unknown = [v for v in wanted if v not in earlier.choices]
                if unknown:
                    raise ValueError(f"{name}: {other} has no choice {unknown[0]!r}")
        seen[name] = param
    estimator = space.get("estimator")
    if estimator is not None:
        kinds = {"logistic_regression", "random_forest"}
        if not isinstance(estimator, CategoricalParam) or not set(estimator.choices) <= kinds:
            raise ValueError(f"estimator: a categorical parameter with choices among {kinds}")
    if not space:
        raise ValueError("the search space is empty")
    return space


#: Parameter name -> how to search it, in order (``when`` refers to earlier ones). The
#: name ``estimator`` chooses the estimator kind; every other name is a parameter of it.
SearchSpace = Annotated[dict[str, Param], AfterValidator(_check_space)]


class StudySettings(_Strict):
    """The objective, the budget, the search and where the study is kept."""

    metric: str = Field(
        default="roc_auc", description="A scikit-learn scorer name, cross-validated."
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int | None = Field(default=30, ge=1, le=10_000, description="Trial budget.")
    timeout_seconds: float | None = Field(
        default=None, gt=0, description="Time budget: no trial starts after it."
    )
    cv: int = Field(default=3, ge=2, le=20, description="Folds; each one a pruning step.")
    seed: int = 0
    startup_trials: int = Field(default=8, ge=0, description="Random trials before TPE.")
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = Field(default=5, ge=0)
    storage: str | None = Field(
        default=None,
        description="The study storage: an SQLAlchemy URL (PostgreSQL) or grpc://HOST:PORT "
        "(Optuna's storage proxy, the chart's default); default $MODELYARD_STUDY_STORAGE, "
        "else SQLite under the run's home (local runs only).",
    )
    heartbeat_seconds: int = Field(default=5, ge=1)
    grace_seconds: int = Field(default=20, ge=2, description="A silent trial is then failed.")
    setup_wait_seconds: float = Field(default=600, gt=0)

    @model_validator(mode="after")
    def _budget(self) -> StudySettings:
        if self.trials is None and self.timeout_seconds is None:
            raise ValueError("give a budget: trials, timeout_seconds or both")
        return self


def study_name(ctx: StepContext) -> str:
    return f"{ctx.pipeline}.{ctx.step}.{ctx.run_date.isoformat()}"


def _storage_url(ctx: StepContext, study: StudySettings) -> str:
    url = study.storage or os.environ.get(c.PipelineEnv.STUDY_STORAGE)
    if url:
        return url
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ValueError(
            "a tuning step in the cluster needs a study storage its pods share: set "
            f"{c.PipelineEnv.STUDY_STORAGE} (the chart: pipelines.tuning) or study.storage"
        )
    ctx.settings.home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{ctx.settings.home / 'studies.db'}"


def open_storage(url: str, study: StudySettings) -> Any:
    """The study storage: ``grpc://HOST:PORT`` is Optuna's storage proxy (the chart's,
    ``modelyard pipeline study-storage``); anything else an SQLAlchemy URL."""
    import optuna
    import sqlalchemy.exc

    if url.startswith("grpc://"):
        address = urllib.parse.urlsplit(url)
        if not address.hostname or not address.port:
            raise ValueError(f"study storage {url!r}: give grpc://HOST:PORT")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = optuna.storages.GrpcStorageProxy(host=address.hostname, port=address.port)
        try:
            proxy.wait_server_ready(timeout=study.setup_wait_seconds)
        except ConnectionError:
            raise ConnectionError(
                f"the study storage at {url} did not answer in {study.setup_wait_seconds:g}s"
            ) from None
        return proxy
    for attempt in range(1, 6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=study.heartbeat_seconds,
                    grace_period=study.grace_seconds,
                    engine_kwargs={"pool_pre_ping": True},
                )
        except sqlalchemy.exc.SQLAlchemyError:
            # Workers starting together race to create the schema: the loser finds it.
            if attempt == 5:
                raise
            time.sleep(random.uniform(0.5, 2.0))
    raise AssertionError("unreachable")


def serve_storage(url: str, host: str, port: int) -> None:
    """Serve the study storage at ``url`` (SQLAlchemy) through Optuna's gRPC proxy, until
    the process is stopped: one process owns the database, the trial pods share it."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(url, StudySettings())
        # A worker claims a waiting trial by moving it to RUNNING, which must succeed for
        # one worker only. Optuna reads the trial's state "for update" first: a row lock
        # in PostgreSQL or MySQL, nothing in SQLite. So over SQLite the proxy answers one
        # call at a time (its default is 10 threads: two workers took the same trial).
        serial = url.startswith("sqlite")
        pool = ThreadPoolExecutor(max_workers=1) if serial else None
        logger.info(
            "study storage %s on %s:%d%s",
            redact_uri(url),
            host,
            port,
            " (one call at a time: SQLite has no row locks)" if serial else "",
        )
        optuna.storages.run_grpc_proxy_server(storage, host=host, port=port, thread_pool=pool)


def suggest(trial: Any, space: dict[str, Param]) -> dict[str, Any]:
    """The trial's parameters, in order; a conditional one only when its ``when`` holds."""
    chosen: dict[str, Any] = {}
    for name, param in space.items():
        if param.when and not all(
            chosen.get(other) in (values if isinstance(values, list) else [values])
            for other, values in param.when.items()
        ):
            continue
        if isinstance(param, FloatParam):
            chosen[name] = trial.suggest_float(
                name, param.low, param.high, log=param.log, step=param.step
            )
        elif isinstance(param, IntParam):
            chosen[name] = trial.suggest_int(
                name, param.low, param.high, log=param.log, step=param.step
            )
        else:
            chosen[name] = trial.suggest_categorical(name, param.choices)
    return chosen


def estimator_for(base: EstimatorSettings, params: dict[str, Any]) -> EstimatorSettings:
    """The base estimator with a trial's parameters; the base's fixed parameters apply to
    its own kind only (a searched ``estimator`` may choose another)."""
    kind = params.get("estimator", base.kind)
    fixed = base.parameters if kind == base.kind else {}
    searched = {k: v for k, v in params.items() if k != "estimator"}
    return EstimatorSettings(kind=kind, parameters={**fixed, **searched})


def cross_validate(
    data: TrainingData,
    estimator: EstimatorSettings,
    metric: str,
    cv: int,
    seed: int,
    report: Any = None,
) -> float:
    """Mean score over stratified folds (the folds GridSearchCV uses with this seed);
    ``report(step, running_mean)`` after each fold may stop it (raise)."""
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import StratifiedKFold

    scorer = get_scorer(metric)
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    scores: list[float] = []
    for step, (train, validate) in enumerate(folds.split(data.x_train, data.y_train)):
        model = build_model_pipeline(
            data.numeric_features, data.categorical_features, estimator, seed
        )
        model.fit(data.x_train.iloc[train], data.y_train.iloc[train])
        scores.append(
            float(scorer(model, data.x_train.iloc[validate], data.y_train.iloc[validate]))
        )
        if report is not None:
            report(step, sum(scores) / len(scores))
    return sum(scores) / len(scores)


#: Trial system attribute: when its worker last said it lives (seconds since the epoch),
#: for a storage without Optuna's own heartbeats (the gRPC storage proxy).
_HEARTBEAT = "modelyard:heartbeat"


def _has_heartbeats(storage: Any) -> bool:
    """Optuna's RDB storage records heartbeats itself; its gRPC proxy does not."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return isinstance(storage, BaseHeartbeat)


@contextlib.contextmanager
def _heartbeat(storage: Any, trial_id: int, interval: float) -> Iterator[None]:
    """Tell the storage this trial's worker lives, until the trial ends."""
    stop = threading.Event()
    native = _has_heartbeats(storage)

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried next time
                if native:
                    storage.record_heartbeat(trial_id)
                else:
                    storage.set_trial_system_attr(trial_id, _HEARTBEAT, time.time())
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fail_stale(study: Any, storage: Any, settings: StudySettings) -> None:
    """Fail the running trials whose worker stopped beating for ``grace_seconds``."""
    import optuna
    from optuna.trial import TrialState

    if _has_heartbeats(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.system_attrs.get(_HEARTBEAT)
        if last is None and trial.datetime_start is not None:
            last = trial.datetime_start.timestamp()  # claimed, killed before its first beat
        if last is None or now - float(last) < settings.grace_seconds:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                logger.warning("trial %d: no heartbeat for %.0fs, failed", trial.number, now - last)


def _claim(study: Any, storage: Any, study_id: int) -> Any:
    """Take one waiting trial of the budget (None when there is none left): moving it to
    RUNNING succeeds for one worker only."""
    import optuna
    from optuna.trial import TrialState

    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, waiting.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                # What Study.ask does with a trial it took from the queue.
                return optuna.Trial(study, trial_id), trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _progress(ctx: StepContext, study: Any, budget: int | None) -> str:
    counts = _counts(study)
    done = sum(counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL"))
    try:
        best = f"{study.best_value:.4f}"
    except ValueError:
        best = "-"
    text = (
        f"trials {done}/{budget or '?'} done, {counts.get('RUNNING', 0)} running, "
        f"{counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed, best {best}"
    )
    ctx.report(text)
    return text


# The study storage's NetworkPolicy admits the pods that carry this label.
@pod_labels({c.LABEL_STUDY_CLIENT: "true"})
def tune_model(
    ctx: StepContext,
    features: str,
    numeric_features: list[str],
    categorical_features: list[str],
    label: str,
    model_name: str,
    space: SearchSpace,
    study: StudySettings | None = None,
    experiment: str | None = None,
    days: int = 7,
    holdout_days: int = 1,
    estimator: EstimatorSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Step: tune with Optuna, then fit, log and return the best model; see the module
    docstring. Run it with ``parallelism: N`` for N workers."""
    import optuna

    settings = study or StudySettings()
    base = estimator or EstimatorSettings()
    worker = ctx.partition_index or 0
    url = _storage_url(ctx, settings)
    storage = open_storage(url, settings)
    name = study_name(ctx)
    data = load_training_data(
        ctx, features, numeric_features, categorical_features, label, days, holdout_days
    )
    tracked_experiment = experiment or model_name
    logger.info("study %s in %s, worker %d", name, redact_uri(url), worker)
    parent: TrackedRun | str
    if worker == 0:
        parent = _set_up(ctx, storage, name, settings, tracked_experiment, space)
    else:
        parent = _wait_for_set_up(storage, name, settings)
    sampler = optuna.samplers.TPESampler(
        # Different workers (and a retried one) must not draw the same random trials.
        seed=settings.seed + 1009 * worker + 101 * ctx.attempt,
        n_startup_trials=settings.startup_trials,
        constant_liar=True,
    )
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials)
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    study_id = storage.get_study_id_from_name(name)
    deadline = time.monotonic() + settings.timeout_seconds if settings.timeout_seconds else None
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        _fail_stale(loaded, storage, settings)
        claimed = _claim(loaded, storage, study_id)
        if claimed is None:
            break
        trial, trial_id = claimed
        with _heartbeat(storage, trial_id, settings.heartbeat_seconds):
            _run_trial(
                ctx, tracked_experiment, loaded, trial, parent, data, base, space, settings, seed
            )
        ran += 1
        logger.info(_progress(ctx, loaded, settings.trials))
    if worker != 0:
        return {"trials_run": ran}
    finished = _finish(ctx, loaded, storage, parent, data, base, settings, seed)
    return {**finished, "model_name": model_name, "trials_run": ran}


def _set_up(
    ctx: StepContext,
    storage: Any,
    name: str,
    settings: StudySettings,
    experiment: str,
    space: dict[str, Param],
) -> TrackedRun:
    """Worker 0: the study, its parent run and its budget of waiting trials; all of it
    found again (not made twice) when the step or the pipeline runs again."""
    import optuna

    study = optuna.create_study(
        study_name=name, storage=storage, direction=settings.direction, load_if_exists=True
    )
    parent_id = study.user_attrs.get(_PARENT_RUN)
    if parent_id:
        parent = TrackedRun(ctx, experiment, name, {}, run_id=str(parent_id))
    else:
        parent = TrackedRun(
            ctx, experiment, run_name=f"study {name}", tags={**run_tags(ctx), c.RunTags.STUDY: name}
        )
        parent.params(
            {
                "study.metric": settings.metric,
                "study.direction": settings.direction,
                "study.trials": settings.trials,
                "study.timeout_seconds": settings.timeout_seconds,
                "study.cv": settings.cv,
                "study.space": ", ".join(space),
            }
        )
        study.set_user_attr(_PARENT_RUN, parent.run_id)
    if settings.trials is not None:
        missing = settings.trials - len(study.get_trials(deepcopy=False))
        for _ in range(max(missing, 0)):
            study.enqueue_trial({})
        study.set_user_attr(_BUDGET, settings.trials)
    logger.info("study %s: parent run %s, budget %s", name, parent.run_id, settings.trials)
    return parent


def _wait_for_set_up(storage: Any, name: str, settings: StudySettings) -> str:
    import optuna

    waited_until = time.monotonic() + settings.setup_wait_seconds
    while time.monotonic() < waited_until:
        with contextlib.suppress(KeyError):
            study = optuna.load_study(study_name=name, storage=storage)
            parent = study.user_attrs.get(_PARENT_RUN)
            if parent and (settings.trials is None or _BUDGET in study.user_attrs):
                return str(parent)
        time.sleep(1)
    raise TimeoutError(
        f"study {name} was not set up by worker 0 within {settings.setup_wait_seconds:g}s"
    )


def _run_trial(
    ctx: StepContext,
    experiment: str,
    study: Any,
    trial: Any,
    parent: TrackedRun | str,
    data: TrainingData,
    base: EstimatorSettings,
    space: dict[str, Param],
    settings: StudySettings,
    seed: int,
) -> None:
    import optuna
    from mlflow.entities import Metric

    parent_id = parent.run_id if isinstance(parent, TrackedRun) else parent
    child = TrackedRun(
        ctx,
        experiment,
        run_name=f"trial {trial.number}",
        tags={
            **run_tags(ctx),
            "mlflow.parentRunId": parent_id,
            c.RunTags.STUDY: study.study_name,
            c.RunTags.TRIAL: str(trial.number),
        },
    )
    trial.set_user_attr(_CHILD_RUN, child.run_id)
    trial.set_user_attr(_WORKER, f"{socket.gethostname()}/{ctx.partition_index or 0}")
    trial.set_user_attr(_WORKER_PID, os.getpid())
    started = time.monotonic()
    fold_metrics: list[Any] = []

    def report(step: int, value: float) -> None:
        fold_metrics.append(Metric(f"cv_{settings.metric}", value, int(time.time() * 1000), step))
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {step + 1}")

    state = "FAIL"
    try:
        params = suggest(trial, space)
        child.params(params)
        try:
            value = cross_validate(
                data, estimator_for(base, params), settings.metric, settings.cv, seed, report
            )
            study.tell(trial, value)
            state = "COMPLETE"
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state = "PRUNED"
    except Exception:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        logger.exception("trial %d failed", trial.number)
    finally:
        child.client.log_batch(child.run_id, metrics=fold_metrics)
        child.metrics({"trial_seconds": time.monotonic() - started})
        child.client.set_tag(child.run_id, c.RunTags.TRIAL_STATE, state)
        child.finish(state != "FAIL")


def _finish(
    ctx: StepContext,
    study: Any,
    storage: Any,
    parent: TrackedRun | str,
    data: TrainingData,
    base: EstimatorSettings,
    settings: StudySettings,
    seed: int,
) -> dict[str, Any]:
    """Worker 0: wait for the other workers' trials, then fit and log the best model."""
    from optuna.trial import TrialState

    assert isinstance(parent, TrackedRun)
    # A trial whose worker died stays RUNNING until its heartbeat is stale.
    limit = time.monotonic() + settings.grace_seconds * 4 + (settings.timeout_seconds or 3600)
    while _counts(study).get("RUNNING", 0) and time.monotonic() < limit:
        _fail_stale(study, storage, settings)
        time.sleep(settings.heartbeat_seconds)
    counts = _counts(study)
    logger.info(_progress(ctx, study, settings.trials))
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise RuntimeError(f"study {study.study_name}: no trial completed ({counts})")
    best = study.best_trial
    best_run = str(best.user_attrs.get(_CHILD_RUN, ""))
    _close_failed_children(parent, study)
    chosen = estimator_for(base, best.params)
    parent.params({f"best.{k}": v for k, v in best.params.items()})
    parent.metrics(
        {
            f"best_cv_{settings.metric}": float(best.value),
            **{f"trials_{state.lower()}": float(n) for state, n in counts.items()},
        }
    )
    parent.client.set_tag(parent.run_id, c.RunTags.TRIAL, str(best.number))
    parent.client.set_tag(parent.run_id, c.RunTags.TRIAL_RUN_ID, best_run)
    succeeded = False
    try:
        model = build_model_pipeline(data.numeric_features, data.categorical_features, chosen, seed)
        params = {
            "estimator": chosen.kind,
            **{f"estimator.{k}": v for k, v in chosen.parameters.items()},
            "seed": seed,
        }
        result = fit_and_log(
            parent,
            data,
            model,
            chosen.kind,
            params,
            lambda m: m.fit(data.x_train, data.y_train),
        )
        succeeded = True
    finally:
        parent.finish(succeeded)
    return {
        **result,
        "study": study.study_name,
        "best_trial": best.number,
        f"best_cv_{settings.metric}": round(float(best.value), 4),
        "trials": counts,
        "version_tags": {
            c.RunTags.STUDY: study.study_name,
            c.RunTags.TRIAL: str(best.number),
            c.RunTags.TRIAL_RUN_ID: best_run,
        },
    }


def _close_failed_children(parent: TrackedRun, study: Any) -> None:
    """A killed worker left its trial's child run RUNNING: say in MLflow that it failed."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get(_CHILD_RUN)
        if not run_id:
            continue
        run = parent.client.get_run(run_id)
        if run.info.status == "RUNNING":
            parent.client.set_tag(run_id, c.RunTags.TRIAL_STATE, "FAIL")
            parent.client.set_terminated(run_id, "FAILED")
