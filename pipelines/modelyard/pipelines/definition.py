"""Pipeline definitions: the YAML file parsed and checked once, into typed models.

A pipeline is a DAG of steps; each step names a Python callable by dotted path
(``modelyard.pipelines.ingest:ingest_files``) and the parameters it is called with.
Loading a file checks everything that can be checked before anything runs: the YAML
shape, the schedule, unknown or cyclic dependencies, and each step's parameters against
its callable's signature (types included, through pydantic), so a typo fails at load
time with a message that names the step and the parameter.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

# Kubernetes object names: CronJob names are limited to 52 characters because the
# controller appends an 11-character suffix to the Jobs it creates.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_STEP_NAME = re.compile(r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class PipelineDefinitionError(ValueError):
    """The pipeline file cannot be run as written; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    """How often a failed or timed-out step is tried again, and how long to wait."""

    attempts: int = Field(default=1, ge=1, le=20, description="Total attempts, the first included.")
    backoff_seconds: float = Field(default=1.0, ge=0, description="Wait before the second attempt.")
    backoff_factor: float = Field(
        default=2.0, ge=1, description="Each further wait is this much longer."
    )
    max_backoff_seconds: float = Field(default=300.0, ge=0)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 for the first retry)."""
        delay = self.backoff_seconds * self.backoff_factor ** max(attempt - 2, 0)
        return float(min(delay, self.max_backoff_seconds))


class Resources(_Strict):
    """Kubernetes container resources (used by ``render``; a local run ignores them)."""

    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, str]) -> dict[str, str]:
        for key, quantity in value.items():
            if not _QUANTITY.match(str(quantity)):
                raise ValueError(
                    f"{key}: {quantity!r} is not a Kubernetes quantity (e.g. 500m, 1Gi)"
                )
        return value


class FanOut(_Strict):
    """Run the step once per partition index; on Kubernetes as an Indexed Job."""

    completions: int = Field(ge=1, le=1000, description="How many partition indexes, 0..N-1.")
    parallelism: int = Field(default=1, ge=1, le=1000, description="How many run at the same time.")


class StepSpec(_Strict):
    """One node of the DAG."""

    name: str
    function: str = Field(description="Dotted path of the callable: package.module:function.")
    depends_on: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0)
    retries: RetryPolicy = RetryPolicy()
    resources: Resources | None = None
    fan_out: FanOut | None = None
    parallelism: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Workers of this step running at once, sharing their work through a "
        "store (a tuning study): N calls, each told its worker index; in the cluster an "
        "Indexed Job of N pods.",
    )

    @model_validator(mode="after")
    def _one_kind_of_indexes(self) -> StepSpec:
        if self.fan_out is not None and self.parallelism is not None:
            raise ValueError(
                "a step has either fan_out (partitions of the data) or parallelism "
                "(workers sharing one piece of work), not both"
            )
        return self

    @property
    def indexes(self) -> FanOut | None:
        """How the step is split into indexed calls (pods): its fan-out, or one index per
        worker; None for a step that runs once."""
        if self.parallelism is not None:
            return FanOut(completions=self.parallelism, parallelism=self.parallelism)
        return self.fan_out

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _STEP_NAME.match(value) or len(value) > 40:
            raise ValueError(
                f"step name {value!r} must be lower-case letters, digits, '-' or '_' "
                "(at most 40 characters)"
            )
        return value

    @field_validator("function")
    @classmethod
    def _function(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if not module or not attr:
            raise ValueError(f"{value!r} is not 'package.module:function'")
        return value


class PipelineSpec(_Strict):
    """The whole file."""

    name: str
    description: str = ""
    schedule: str | None = Field(
        None, description="Cron schedule (5 fields or @daily etc.) for the CronJob."
    )
    timezone: str | None = Field(default=None, description="IANA time zone of the schedule.")
    max_parallel: int = Field(default=4, ge=1, le=64, description="Steps that may run at once.")
    timeout_seconds: float | None = Field(
        default=None, gt=0, description="Deadline for the whole run."
    )
    resources: Resources = Field(default_factory=Resources)
    steps: list[StepSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS_LABEL.match(value) or len(value) > 52:
            raise ValueError(
                f"pipeline name {value!r} must be a DNS label (lower-case letters, digits, '-') "
                "of at most 52 characters, since it names the CronJob"
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        # The CronJob controller takes standard 5-field cron or the @ macros; croniter also
        # accepts a seconds field, which Kubernetes would reject, so count fields here.
        if value in _CRON_MACROS:
            return value
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"schedule {value!r} is not a valid cron expression "
                "(5 fields: minute hour day-of-month month day-of-week, or @hourly/@daily/...)"
            )
        return value

    @property
    def steps_by_name(self) -> dict[str, StepSpec]:
        return {step.name: step for step in self.steps}


StepFunction = Callable[..., Any]
_POD_LABELS = "modelyard_pod_labels"


def pod_labels(labels: dict[str, str]) -> Callable[[StepFunction], StepFunction]:
    """Decorator: the pods of this step carry ``labels`` in the cluster (e.g. the label a
    NetworkPolicy admits to a database only this step talks to)."""

    def mark(function: StepFunction) -> StepFunction:
        function.__dict__[_POD_LABELS] = dict(labels)
        return function

    return mark


def step_pod_labels(function: StepFunction) -> dict[str, str]:
    return dict(getattr(function, _POD_LABELS, {}))


class Pipeline:
    """A checked pipeline: the spec, the resolved callables, the validated arguments."""

    def __init__(
        self,
        spec: PipelineSpec,
        source_text: str,
        functions: dict[str, StepFunction],
        arguments: dict[str, dict[str, Any]],
        order: list[str],
    ) -> None:
        self.spec = spec
        self.source_text = source_text
        self.functions = functions
        self.arguments = arguments
        self.order = order

    @property
    def name(self) -> str:
        return self.spec.name

    def step(self, name: str) -> StepSpec:
        try:
            return self.spec.steps_by_name[name]
        except KeyError:
            known = ", ".join(self.order)
            raise PipelineDefinitionError(
                f"pipeline {self.name!r} has no step {name!r} (steps: {known})"
            ) from None


def expand_placeholders(value: Any, variables: Mapping[str, str], strict: bool = True) -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in strings, recursively.

    ``variables`` first (the run's ``lake``, ``home``, ``date``), then the environment.
    Not ``strict`` (rendering for a cluster, whose environment is not this one): an
    unknown name stays as written.
    """
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            key, default = match.group(1), match.group(2)
            if key in variables:
                return variables[key]
            if key in os.environ:
                return os.environ[key]
            if default is not None:
                return default
            if not strict:
                return match.group(0)
            raise PipelineDefinitionError(
                f"${{{key}}} is neither a run variable ({', '.join(sorted(variables))}) "
                "nor set in the environment, and has no default (${NAME:-default})"
            )

        return _PLACEHOLDER.sub(substitute, value)
    if isinstance(value, list):
        return [expand_placeholders(item, variables, strict) for item in value]
    if isinstance(value, dict):
        return {key: expand_placeholders(item, variables, strict) for key, item in value.items()}
    return value


def topological_order(steps: list[StepSpec]) -> list[str]:
    """Steps in an order that respects ``depends_on`` (file order among equals).

    Raises PipelineDefinitionError naming an unknown dependency or the steps of a cycle.
    """
    names = [step.name for step in steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PipelineDefinitionError(f"duplicate step names: {', '.join(duplicates)}")
    known = set(names)
    for step in steps:
        for dependency in step.depends_on:
            if dependency not in known:
                raise PipelineDefinitionError(
                    f"step {step.name!r} depends on unknown step {dependency!r}"
                )
            if dependency == step.name:
                raise PipelineDefinitionError(f"step {step.name!r} depends on itself")
    depends = {step.name: list(dict.fromkeys(step.depends_on)) for step in steps}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(names):
        ready = [n for n in names if n not in done and all(d in done for d in depends[n])]
        if not ready:
            raise PipelineDefinitionError(
                f"dependency cycle: {' -> '.join(_find_cycle(depends, done))}"
            )
        order.extend(ready)
        done.update(ready)
    return order


def _find_cycle(depends: dict[str, list[str]], done: set[str]) -> list[str]:
    # Walk dependencies from any unfinished step; in a graph where every remaining node
    # has a remaining dependency, the walk must revisit a node: that loop is the cycle.
    start = next(name for name in depends if name not in done)
    path = [start]
    while True:
        following = next(d for d in depends[path[-1]] if d not in done)
        if following in path:
            cycle = path[path.index(following) :] + [following]
            return list(reversed(cycle))
        path.append(following)


def resolve_function(dotted: str) -> StepFunction:
    module_name, _, attr = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PipelineDefinitionError(f"cannot import {module_name!r}: {error}") from error
    function = getattr(module, attr, None)
    if not callable(function):
        raise PipelineDefinitionError(f"module {module_name!r} has no callable {attr!r}")
    return typing.cast(StepFunction, function)


def bind_parameters(step: StepSpec, function: StepFunction) -> dict[str, Any]:
    """Check the step's parameters against the callable and convert them to its types.

    The callable's first parameter receives the StepContext; the others are keyword
    parameters filled from ``parameters``. Annotated parameters are validated (and
    converted, e.g. into pydantic models) by pydantic here, once.
    """
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())[1:]
    try:
        hints = typing.get_type_hints(function)
    except Exception as error:  # an unresolvable annotation is the author's bug: say where
        raise PipelineDefinitionError(
            f"step {step.name!r}: cannot read the annotations of {step.function}: {error}"
        ) from error
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    named = {p.name: p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = sorted(set(step.parameters) - set(named))
    if unknown and not accepts_any:
        raise PipelineDefinitionError(
            f"step {step.name!r}: unknown parameter(s) {', '.join(unknown)} for {step.function} "
            f"(it takes: {', '.join(named) or 'none'})"
        )
    missing = sorted(
        name
        for name, p in named.items()
        if p.default is inspect.Parameter.empty and name not in step.parameters
    )
    if missing:
        raise PipelineDefinitionError(
            f"step {step.name!r}: missing required parameter(s) {', '.join(missing)} "
            f"for {step.function}"
        )
    bound: dict[str, Any] = {}
    for name, value in step.parameters.items():
        annotation = hints.get(name)
        if annotation is None:
            bound[name] = value
            continue
        try:
            bound[name] = TypeAdapter(annotation).validate_python(value)
        except ValidationError as error:
            details = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or name}: {e['msg']}"
                for e in error.errors()
            )
            raise PipelineDefinitionError(
                f"step {step.name!r}: parameter {name!r} is invalid: {details}"
            ) from None
    return bound


def parse_pipeline(
    text: str, variables: Mapping[str, str] | None = None, strict_placeholders: bool = True
) -> Pipeline:
    """Parse and check pipeline YAML text; see the module docstring."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PipelineDefinitionError(f"not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise PipelineDefinitionError("a pipeline file must be a mapping with 'name' and 'steps'")
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as error:
        lines = [
            f"  {'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
        ]
        raise PipelineDefinitionError("invalid pipeline:\n" + "\n".join(lines)) from None
    order = topological_order(spec.steps)
    functions: dict[str, StepFunction] = {}
    arguments: dict[str, dict[str, Any]] = {}
    for step in spec.steps:
        expanded = step.model_copy(
            update={
                "parameters": expand_placeholders(
                    step.parameters, variables or {}, strict_placeholders
                )
            }
        )
        functions[step.name] = resolve_function(step.function)
        arguments[step.name] = bind_parameters(expanded, functions[step.name])
    return Pipeline(spec, text, functions, arguments, order)


def load_pipeline(
    path: str | Path, variables: Mapping[str, str] | None = None, strict_placeholders: bool = True
) -> Pipeline:
    """Read, parse and check a pipeline file."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise PipelineDefinitionError(f"cannot read {file}: {error.strerror}") from error
    try:
        return parse_pipeline(text, variables, strict_placeholders)
    except PipelineDefinitionError as error:
        raise PipelineDefinitionError(f"{file}: {error}") from None
