"""What a step is told about its run: where the lake is, which date, which partition.

Defaults suit a fresh checkout (everything under ``./.modelyard``); environment variables
and CLI options override them, which is how the CronJob configures a run in-cluster.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.core.contracts import TRACKING_URI_ENV, PipelineEnv

HOME_ENV = PipelineEnv.HOME
LAKE_ENV = PipelineEnv.LAKE
RUN_DATE_ENV = PipelineEnv.RUN_DATE
TRACKING_ENV = TRACKING_URI_ENV
# Set by Kubernetes in each pod of an Indexed Job, and by the local runner for fan-out.
INDEX_ENV = PipelineEnv.COMPLETION_INDEX

logger = logging.getLogger(__name__)
#: Where ``StepContext.report`` sends progress in a step's process (set by the runner).
progress_sink: Callable[[str], None] | None = None


@dataclass(frozen=True)
class RunSettings:
    """Where a run reads and writes; resolved once at the edge (CLI or CronJob env)."""

    home: Path
    lake: str
    tracking_uri: str
    run_date: dt.date

    @classmethod
    def resolve(
        cls,
        home: str | Path | None = None,
        lake: str | None = None,
        tracking_uri: str | None = None,
        run_date: dt.date | None = None,
    ) -> RunSettings:
        """Explicit values first, then the environment, then local defaults."""
        home_path = Path(home or os.environ.get(HOME_ENV) or ".modelyard").absolute()
        lake_url = lake or os.environ.get(LAKE_ENV) or str(home_path / "lake")
        if "://" not in lake_url:
            lake_url = str(Path(lake_url).absolute())
        tracking = (
            tracking_uri or os.environ.get(TRACKING_ENV) or f"sqlite:///{home_path / 'mlflow.db'}"
        )
        if run_date is None:
            from_env = os.environ.get(RUN_DATE_ENV)
            run_date = (
                dt.date.fromisoformat(from_env) if from_env else dt.datetime.now(dt.UTC).date()
            )
        return cls(
            home=home_path, lake=lake_url.rstrip("/"), tracking_uri=tracking, run_date=run_date
        )

    @property
    def variables(self) -> dict[str, str]:
        """Values for ``${lake}``, ``${home}`` and ``${date}`` in step parameters."""
        return {"lake": self.lake, "home": str(self.home), "date": self.run_date.isoformat()}


@dataclass(frozen=True)
class StepContext:
    """The first argument of every step callable."""

    pipeline: str
    step: str
    run_id: str
    settings: RunSettings
    attempt: int = 1
    # Fan-out: this call's partition index and how many there are (None when not fanned out).
    partition_index: int | None = None
    partition_count: int | None = None
    # What each dependency returned, by step name (empty when a step runs on its own).
    upstream: dict[str, Any] = field(default_factory=dict)

    @property
    def lake(self) -> str:
        return self.settings.lake

    @property
    def run_date(self) -> dt.date:
        return self.settings.run_date

    def report(self, progress: str) -> None:
        """A line about how far the step is, shown while it runs (``pipeline run``'s
        progress table locally, the pod's log in the cluster)."""
        if progress_sink is not None:
            progress_sink(progress)
        else:
            logger.info("%s: %s", self.step, progress)

    def shard(self, items: list[Any]) -> list[Any]:
        """This partition's share of ``items`` (all of them when not fanned out)."""
        if self.partition_index is None or not self.partition_count:
            return list(items)
        return list(items[self.partition_index :: self.partition_count])
