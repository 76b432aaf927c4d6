"""Tuning benchmark: Optuna trials per minute with 1, 2 and 4 workers sharing one study in
PostgreSQL, and the best objective at a budget of 30 trials against today's grid search
(scikit-learn GridSearchCV over 30 candidates of the same space, the same folds).

The data is the tuned churn sample's features (built once with `modelyard pipeline run`).
Each worker is a `modelyard pipeline run --step tune` process with JOB_COMPLETION_INDEX set,
as a pod of the Indexed Job is; a fresh study per measurement. Trials per minute counts the
search (first trial start to last trial end), not start-up or the final fit.

    flock /tmp/modelyard-bench.lock .venv/bin/python benchmarks/tuning_bench.py \
        --workers 1 2 4 --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "pipelines" / "samples" / "churn-tuned.yaml"
MODELYARD = str(Path(sys.executable).parent / "modelyard")
RUN_DATE = "2026-03-10"
BUDGET = 30
FEATURE_STEPS = ["generate", "ingest-customers", "ingest-usage", "clean", "join", "aggregate"]
#: 30 candidates of the sample's space (3 x 5 x 2), the grid a user would write.
GRID = {
    "n_estimators": [10, 25, 80],
    "max_depth": [2, 4, 6, 9, 12],
    "min_samples_leaf": [1, 10],
}


def _env(home: Path, storage: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELYARD_", "MLFLOW_"))}
    env.update(
        MODELYARD_HOME=str(home),
        MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
        MODELYARD_STUDY_STORAGE=storage,
        MODELYARD_TUNING_TRIALS=str(BUDGET),
        MODELYARD_RUN_DATE=RUN_DATE,
        **extra,
    )
    return env


def _variant(directory: Path, workers: int, tag: str) -> Path:
    """The sample with ``workers`` workers and a pipeline name of its own (a new study)."""
    text = SAMPLE.read_text().replace("parallelism: 3", f"parallelism: {workers}")
    text = text.replace("name: churn-tuned\n", f"name: bench-{tag}\n", 1)
    path = directory / f"bench-{tag}.yaml"
    path.write_text(text)
    return path


def build_features(home: Path, storage: str) -> None:
    """The features every measurement tunes on, built once: the lake's datasets do not
    depend on the pipeline's name."""
    pipeline = _variant(home, 1, "features")
    args = [MODELYARD, "pipeline", "run", str(pipeline)]
    for step in FEATURE_STEPS:
        args += ["--step", step]
    subprocess.run(args, env=_env(home, storage), check=True, capture_output=True, cwd=home)


def measure(home: Path, storage: str, workers: int, tag: str) -> dict[str, float]:
    import optuna

    pipeline = _variant(home, workers, tag)
    env = _env(home, storage)
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [MODELYARD, "pipeline", "run", str(pipeline), "--step", "tune"],
            env={**env, "JOB_COMPLETION_INDEX": str(i)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=home,
        )
        for i in range(workers)
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"worker failed ({pipeline})")
    wall = time.monotonic() - started
    study = optuna.load_study(study_name=f"bench-{tag}.tune.{RUN_DATE}", storage=storage)
    trials = study.get_trials(deepcopy=False)
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    search = (last - first).total_seconds()
    return {
        "trials": len(trials),
        "search_seconds": search,
        "wall_seconds": wall,
        "trials_per_minute": len(trials) / search * 60,
        "best": float(study.best_value),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
    }


def grid_search(home: Path, tag: str) -> dict[str, float]:
    """Today's tuning, GridSearchCV, on the same features, folds and scorer (the features
    the measurement ``tag`` built)."""
    import datetime as dt

    from modelyard.pipelines.context import RunSettings, StepContext
    from modelyard.pipelines.definition import load_pipeline
    from modelyard.pipelines.train import build_model_pipeline, load_training_data

    pipeline = load_pipeline(home / f"bench-{tag}.yaml", {"lake": str(home / "lake")})
    p = pipeline.arguments["tune"]
    settings = RunSettings.resolve(home, str(home / "lake"), None, dt.date.fromisoformat(RUN_DATE))
    ctx = StepContext(f"bench-{tag}", "tune", "grid", settings)
    data = load_training_data(
        ctx, p["features"], p["numeric_features"], p["categorical_features"], p["label"], 5, 1
    )
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    model = build_model_pipeline(
        data.numeric_features, data.categorical_features, p["estimator"], 0
    )
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    space = {f"model__{k}": v for k, v in GRID.items()}
    started = time.monotonic()
    searcher = GridSearchCV(model, space, cv=folds, scoring="roc_auc", n_jobs=1)
    searcher.fit(data.x_train, data.y_train)
    seconds = time.monotonic() - started
    return {
        "trials": len(searcher.cv_results_["params"]),
        "search_seconds": seconds,
        "trials_per_minute": len(searcher.cv_results_["params"]) / seconds * 60,
        "best": float(searcher.best_score_),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    options = parser.parse_args()
    from tests.support.postgres import running_postgres

    rows: list[tuple[str, dict[str, Any]]] = []
    with running_postgres() as postgres, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        build_features(home, postgres.url)
        results: dict[int, list[dict[str, float]]] = {}
        for repeat in range(options.repeat):
            for workers in options.workers:
                run = measure(home, postgres.url, workers, f"w{workers}-r{repeat}")
                print(f"{workers} worker(s), run {repeat + 1}: {run}", file=sys.stderr)
                results.setdefault(workers, []).append(run)
        grid = [grid_search(home, "features") for _ in range(options.repeat)]
        for workers, runs in results.items():
            rows.append((f"Optuna TPE, {workers} worker(s)", _median(runs)))
        rows.append(("GridSearchCV (today), 1 process", _median(grid)))
    base = rows[0][1]["trials_per_minute"]
    lines = [
        "| tuning | trials | trials/min (median) | vs 1 worker | best CV ROC AUC (median) "
        "| pruned |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['trials']:.0f} | {row['trials_per_minute']:.1f} | "
            f"{row['trials_per_minute'] / base:.2f}x | {row['best']:.4f} | "
            f"{row.get('pruned', 0):.0f} |"
        )
    print("\n".join(lines) if options.markdown else rows)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


if __name__ == "__main__":
    main()
