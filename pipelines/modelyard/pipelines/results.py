"""What each step of a run returned, kept in the lake.

A step that runs in its own process, pod or Job reads what its dependencies returned
from here, and the orchestrator of a run in the cluster reads every step's result from
here for the run summary: results pass through the lake, never through one process's
memory. One file per call of a step (a fanned-out step has one per partition), under

    {lake}/_runs/{pipeline}/date={run date}/{step}/result-{index}.json

A run is a pipeline and its run date, as the step Jobs in the cluster are named: running
the same pipeline for the same date again replaces the results step by step.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec

RUNS_DIR = "_runs"
_SINGLE = "result.json"


def merge_partition_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for a fanned-out step: numbers summed, lists joined, other values kept
    from the first partition that has them."""
    merged: dict[str, Any] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, bool) or key not in merged:
                merged[key] = list(value) if isinstance(value, list) else value
            elif isinstance(value, int | float) and isinstance(merged[key], int | float):
                merged[key] += value
            elif isinstance(value, list) and isinstance(merged[key], list):
                merged[key].extend(value)
    return merged


@dataclass(frozen=True)
class RunResults:
    """The results of one run (pipeline, run date) in the lake."""

    lake: str
    pipeline: str
    run_date: dt.date

    def step_url(self, step: str) -> str:
        return (
            f"{self.lake.rstrip('/')}/{RUNS_DIR}/{self.pipeline}/"
            f"date={self.run_date.isoformat()}/{step}"
        )

    def write(self, step: str, index: int | None, result: dict[str, Any]) -> None:
        """Store one call's result (atomically: a reader never sees half a file)."""
        fs, directory = fsspec.core.url_to_fs(self.step_url(step))
        fs.makedirs(directory, exist_ok=True)
        name = _SINGLE if index is None else f"result-{index}.json"
        temporary = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        with fs.open(temporary, "w") as handle:
            handle.write(json.dumps(result, default=str, sort_keys=True))
        fs.mv(temporary, f"{directory}/{name}")

    def clear(self, step: str) -> None:
        """Forget a step's results (before it runs again for this date)."""
        fs, directory = fsspec.core.url_to_fs(self.step_url(step))
        if fs.exists(directory):
            fs.rm(directory, recursive=True)

    def read(self, step: str, partitions: int | None = None) -> dict[str, Any] | None:
        """The step's result (partitions merged), or None when it has not run for this
        date; with ``partitions``, None until every partition's result is there."""
        fs, directory = fsspec.core.url_to_fs(self.step_url(step))
        if not fs.exists(directory):
            return None
        names = {str(path).rsplit("/", 1)[-1] for path in fs.ls(directory, detail=False)}
        if partitions is None and _SINGLE in names:
            wanted = [_SINGLE]
        else:
            count = partitions or len([n for n in names if n.startswith("result-")])
            wanted = [f"result-{i}.json" for i in range(count)]
            if not count or any(name not in names for name in wanted):
                return None
        results = []
        for name in wanted:
            with fs.open(f"{directory}/{name}", "r") as handle:
                results.append(json.loads(handle.read()))
        return results[0] if wanted == [_SINGLE] else merge_partition_results(results)
