"""Run a pipeline's DAG in-process: independent steps in parallel, each attempt in its own
process, so that a step that hangs past its timeout can be killed (a thread cannot be).

Each attempt runs in a fresh process group started from a forkserver: killing the group
also stops whatever the step started itself. Dependents of a step that failed are not
started; they are reported as skipped.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from modelyard.core.redaction import install_log_redaction, redact_text
from modelyard.pipelines import context as context_module
from modelyard.pipelines.context import INDEX_ENV, RunSettings, StepContext
from modelyard.pipelines.definition import Pipeline, resolve_function
from modelyard.pipelines.results import RunResults, merge_partition_results

logger = logging.getLogger(__name__)

# Imported once by the forkserver so each attempt starts in milliseconds, not seconds.
_PRELOAD = ["modelyard.pipelines.runner", "pandas", "pyarrow.parquet", "sklearn.pipeline"]
_KILL_GRACE_SECONDS = 3.0


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in {self.SUCCEEDED, self.FAILED, self.TIMED_OUT, self.SKIPPED}


@dataclass
class StepRun:
    """What happened to one step (all its partitions and attempts)."""

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started: float | None = None
    ended: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: The step's latest ``ctx.report`` (e.g. a tuning step's trials so far).
    progress: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started


@dataclass
class PipelineRunResult:
    pipeline: str
    run_id: str
    steps: dict[str, StepRun]
    duration: float

    @property
    def succeeded(self) -> bool:
        return all(step.status is StepStatus.SUCCEEDED for step in self.steps.values())

    @property
    def rows_quarantined(self) -> int:
        return sum(int(s.result.get("rows_quarantined", 0)) for s in self.steps.values())


@dataclass
class _Task:
    """One partition of one step: the unit that gets a process."""

    step: str
    index: int | None
    attempt: int = 0
    not_before: float = 0.0
    process: BaseProcess | None = None
    connection: multiprocessing.connection.Connection | None = None
    deadline: float | None = None
    status: StepStatus = StepStatus.PENDING
    result: dict[str, Any] | None = None
    error: str | None = None
    # The attempt's last word, when it arrived before its process was seen to end.
    outcome: tuple[str, Any] | None = None


def _attempt_entry(
    connection: multiprocessing.connection.Connection,
    function_path: str,
    context: StepContext,
    arguments: dict[str, Any],
) -> None:
    """Child side of one attempt: call the step, send back ("ok", result) or ("error", text)."""
    # A new process group: the parent kills the whole group on timeout.
    os.setsid()
    # As Kubernetes sets it in an Indexed Job's pod; the step reads it from its context too.
    if context.partition_index is not None:
        os.environ[INDEX_ENV] = str(context.partition_index)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {context.step} %(levelname)s %(message)s"
    )
    install_log_redaction()
    context_module.progress_sink = lambda text: connection.send(("progress", text))
    try:
        function = resolve_function(function_path)
        outcome = function(context, **arguments)
        if outcome is None:
            outcome = {}
        if not isinstance(outcome, dict):
            raise TypeError(f"{function_path} returned {type(outcome).__name__}, not a dict")
        connection.send(("ok", outcome))
    except BaseException as error:  # everything, KeyboardInterrupt included, is reported
        text = redact_text("".join(traceback.format_exception_only(type(error), error)).strip())
        logger.error("step failed:\n%s", traceback.format_exc())
        connection.send(("error", text))
    finally:
        connection.close()


class PipelineRunner:
    """Runs one pipeline once. ``on_update`` is called whenever a step changes state.

    Every call's result is stored in the lake (``RunResults``); a dependency outside the
    selected steps is taken as done, with the result it stored for this run date.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: RunSettings,
        only_steps: list[str] | None = None,
        partition_index: int | None = None,
        on_update: Callable[[dict[str, StepRun]], None] | None = None,
        run_id: str | None = None,
        skip_steps: list[str] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.on_update = on_update or (lambda _steps: None)
        names = only_steps or pipeline.order
        for name in [*names, *(skip_steps or [])]:
            pipeline.step(name)  # raises naming the unknown step
        self.names = [n for n in pipeline.order if n in names and n not in (skip_steps or [])]
        # When running a subset, dependencies outside it are taken as done (the Indexed Job
        # case: they ran before, in another Job).
        self.steps = {name: StepRun(name) for name in self.names}
        self.tasks: dict[str, list[_Task]] = {}
        for name in self.names:
            fan_out = pipeline.step(name).indexes
            if fan_out is None:
                self.tasks[name] = [_Task(name, None)]
            elif partition_index is not None:
                self.tasks[name] = [_Task(name, partition_index)]
            else:
                self.tasks[name] = [_Task(name, i) for i in range(fan_out.completions)]
        self.results = RunResults(settings.lake, pipeline.name, settings.run_date)
        self._whole_steps = partition_index is None
        self._mp = multiprocessing.get_context("forkserver")
        self._mp.set_forkserver_preload(_PRELOAD)

    # ------------------------------------------------------------------ scheduling
    def _dependencies(self, name: str) -> list[str]:
        return [d for d in self.pipeline.step(name).depends_on if d in self.steps]

    def _ready(self, name: str) -> bool:
        return all(self.steps[d].status is StepStatus.SUCCEEDED for d in self._dependencies(name))

    def _blocked(self, name: str) -> bool:
        return any(
            self.steps[d].status.finished and self.steps[d].status is not StepStatus.SUCCEEDED
            for d in self._dependencies(name)
        )

    def _upstream(self, name: str) -> dict[str, Any]:
        upstream: dict[str, Any] = {}
        for dependency in self.pipeline.step(name).depends_on:
            if dependency in self.steps:
                upstream[dependency] = self.steps[dependency].result
            else:
                indexes = self.pipeline.step(dependency).indexes
                stored = self.results.read(dependency, indexes.completions if indexes else None)
                upstream[dependency] = stored or {}
        return upstream

    def _running_tasks(self) -> list[_Task]:
        return [t for tasks in self.tasks.values() for t in tasks if t.process is not None]

    def _start(self, task: _Task) -> None:
        spec = self.pipeline.step(task.step)
        task.attempt += 1
        fan_out = spec.indexes
        context = StepContext(
            pipeline=self.pipeline.name,
            step=task.step,
            run_id=self.run_id,
            settings=self.settings,
            attempt=task.attempt,
            partition_index=task.index,
            partition_count=fan_out.completions if fan_out else None,
            upstream=self._upstream(task.step),
        )
        receiver, sender = self._mp.Pipe(duplex=False)
        process = self._mp.Process(
            target=_attempt_entry,
            args=(sender, spec.function, context, self.pipeline.arguments[task.step]),
            name=f"step-{task.step}",
        )
        process.start()
        sender.close()
        task.process, task.connection = process, receiver
        task.deadline = time.monotonic() + spec.timeout_seconds if spec.timeout_seconds else None
        task.status = StepStatus.RUNNING
        step = self.steps[task.step]
        step.status = StepStatus.RUNNING
        step.attempts = max(step.attempts, task.attempt)
        if step.started is None:
            step.started = time.monotonic()
            if self._whole_steps:
                self.results.clear(task.step)
        logger.info("started %s (attempt %d)", self._label(task), task.attempt)

    @staticmethod
    def _label(task: _Task) -> str:
        return task.step if task.index is None else f"{task.step}[{task.index}]"

    def _kill(self, task: _Task) -> None:
        process = task.process
        if process is None or process.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.join(_KILL_GRACE_SECONDS)
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.join()

    def _collect(self, task: _Task, timed_out: bool) -> None:
        """The attempt ended (or must end): record it, schedule a retry or finish the task."""
        assert task.process is not None and task.connection is not None
        if timed_out:
            self._kill(task)
            outcome = None
        else:
            self._receive(task)
            outcome, task.outcome = task.outcome, None
            task.process.join()
        exitcode = task.process.exitcode
        task.connection.close()
        task.process.close()
        task.process = task.connection = None
        spec = self.pipeline.step(task.step)
        if outcome is not None and outcome[0] == "ok":
            outcome = self._store(task, outcome[1])
        if outcome is not None and outcome[0] == "ok":
            task.status, task.result = StepStatus.SUCCEEDED, outcome[1]
        else:
            if timed_out:
                task.status = StepStatus.TIMED_OUT
                task.error = f"timed out after {spec.timeout_seconds:g}s and was stopped"
            else:
                task.status = StepStatus.FAILED
                task.error = (
                    str(outcome[1]) if outcome else f"the step process died (exit code {exitcode})"
                )
            logger.warning("%s attempt %d: %s", self._label(task), task.attempt, task.error)
            if task.attempt < spec.retries.attempts:
                task.not_before = time.monotonic() + spec.retries.delay_before(task.attempt + 1)
                task.status = StepStatus.RETRYING
        self._update_step(task.step)

    def _receive(self, task: _Task) -> None:
        """Read what the attempt sent so far: progress lines, then its outcome."""
        assert task.connection is not None
        try:
            while task.outcome is None and task.connection.poll():
                message = task.connection.recv()
                if message[0] == "progress":
                    self.steps[task.step].progress = str(message[1])
                    self.on_update(self.steps)
                else:
                    task.outcome = message
        except (EOFError, OSError):
            pass

    def _store(self, task: _Task, result: dict[str, Any]) -> tuple[str, Any]:
        """Keep the result in the lake; a step whose result cannot be kept has failed."""
        try:
            self.results.write(task.step, task.index, result)
        except (OSError, TypeError, ValueError) as error:
            return ("error", f"cannot store the result in the lake: {error}")
        return ("ok", result)

    def _update_step(self, name: str) -> None:
        step, tasks = self.steps[name], self.tasks[name]
        statuses = {t.status for t in tasks}
        if statuses == {StepStatus.SUCCEEDED}:
            step.status = StepStatus.SUCCEEDED
            results = [t.result or {} for t in tasks]
            step.result = results[0] if len(results) == 1 else merge_partition_results(results)
        elif any(s in {StepStatus.FAILED, StepStatus.TIMED_OUT} for s in statuses):
            failed = next(t for t in tasks if t.status in {StepStatus.FAILED, StepStatus.TIMED_OUT})
            # Stop sibling partitions: the step has failed whatever they do.
            for task in tasks:
                if task.process is not None:
                    self._kill(task)
                    task.process = task.connection = None
                    task.status = StepStatus.FAILED
            step.status = failed.status
            step.error = (
                f"{self._label(failed)}: {failed.error}"
                if failed.index is not None
                else failed.error
            )
        elif StepStatus.RETRYING in statuses and StepStatus.RUNNING not in statuses:
            step.status = StepStatus.RETRYING
        if step.status.finished:
            step.ended = time.monotonic()
        self.on_update(self.steps)

    def run(self) -> PipelineRunResult:
        started = time.monotonic()
        spec = self.pipeline.spec
        run_deadline = started + spec.timeout_seconds if spec.timeout_seconds else None
        self.on_update(self.steps)
        try:
            while not all(step.status.finished for step in self.steps.values()):
                now = time.monotonic()
                if run_deadline is not None and now >= run_deadline:
                    self._abandon(f"the pipeline's timeout ({spec.timeout_seconds:g}s) passed")
                    break
                self._skip_blocked()
                self._start_ready(now)
                self._wait(run_deadline)
        finally:
            for task in self._running_tasks():
                self._kill(task)
        return PipelineRunResult(
            pipeline=self.pipeline.name,
            run_id=self.run_id,
            steps=self.steps,
            duration=time.monotonic() - started,
        )

    def _skip_blocked(self) -> None:
        for name in self.names:
            step = self.steps[name]
            if step.status is StepStatus.PENDING and self._blocked(name):
                step.status = StepStatus.SKIPPED
                failed = [d for d in self._dependencies(name) if self.steps[d].status.finished]
                step.error = "not started: " + ", ".join(
                    f"{d} {self.steps[d].status.value}"
                    for d in failed
                    if self.steps[d].status is not StepStatus.SUCCEEDED
                )
                self.on_update(self.steps)

    def _start_ready(self, now: float) -> None:
        slots = self.pipeline.spec.max_parallel - len(self._running_tasks())
        for name in self.names:
            if slots <= 0:
                return
            step = self.steps[name]
            if step.status.finished or not self._ready(name):
                continue
            fan_out = self.pipeline.step(name).indexes
            running_here = sum(1 for t in self.tasks[name] if t.process is not None)
            limit = fan_out.parallelism if fan_out else 1
            for task in self.tasks[name]:
                if slots <= 0 or running_here >= limit:
                    break
                if task.status in {StepStatus.PENDING, StepStatus.RETRYING} and (
                    task.not_before <= now
                ):
                    self._start(task)
                    slots -= 1
                    running_here += 1

    def _wait(self, run_deadline: float | None) -> None:
        running = self._running_tasks()
        now = time.monotonic()
        wakeups = [t.deadline for t in running if t.deadline is not None]
        wakeups += [
            t.not_before
            for tasks in self.tasks.values()
            for t in tasks
            if t.status is StepStatus.RETRYING and t.process is None
        ]
        if run_deadline is not None:
            wakeups.append(run_deadline)
        timeout = max(0.0, min([*wakeups, now + 0.5]) - now)
        sentinels = {t.process.sentinel: t for t in running if t.process is not None}
        connections = {id(t.connection): t for t in running if t.connection is not None}
        waited: list[Any] = [*sentinels, *(t.connection for t in connections.values())]
        ready = multiprocessing.connection.wait(waited, timeout) if sentinels else []
        if not sentinels:
            time.sleep(timeout)
        for item in ready:
            if isinstance(item, int):
                continue
            task = connections[id(item)]
            if task.outcome is None:
                self._receive(task)
        for item in ready:
            if isinstance(item, int):
                self._collect(sentinels[_as_sentinel(item)], timed_out=False)
        now = time.monotonic()
        for task in self._running_tasks():
            if task.deadline is not None and now >= task.deadline:
                self._collect(task, timed_out=True)

    def _abandon(self, reason: str) -> None:
        for name in self.names:
            step = self.steps[name]
            if step.status.finished:
                continue
            for task in self.tasks[name]:
                if task.process is not None:
                    self._kill(task)
                    task.process = task.connection = None
            step.status = StepStatus.TIMED_OUT if step.started else StepStatus.SKIPPED
            step.error = reason
            step.ended = time.monotonic()
        self.on_update(self.steps)


def _as_sentinel(value: object) -> int:
    # multiprocessing.connection.wait returns the sentinels it was given (ints here).
    assert isinstance(value, int)
    return value


def run_pipeline(
    pipeline: Pipeline,
    settings: RunSettings,
    only_steps: list[str] | None = None,
    partition_index: int | None = None,
    on_update: Callable[[dict[str, StepRun]], None] | None = None,
    skip_steps: list[str] | None = None,
) -> PipelineRunResult:
    """Run ``pipeline`` (or only ``only_steps``, minus ``skip_steps``) and return what
    happened to each step. Dependencies outside the selection are taken as done."""
    runner = PipelineRunner(
        pipeline, settings, only_steps, partition_index, on_update, skip_steps=skip_steps
    )
    return runner.run()
