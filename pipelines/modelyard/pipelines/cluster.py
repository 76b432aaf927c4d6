"""Run a pipeline across the cluster, with Kubernetes as the engine.

The CronJob's pod orchestrates: every step becomes a Job of its own (an Indexed Job for
a fanned-out or parallel step) with the step's resources, retries (the Job's backoff
limit) and timeout (the pod's deadline); independent steps run at the same time, up to
``max_parallel`` steps. The step pods are made from the orchestrating pod itself
(``manifests.template_from_pod``), so they get what the chart gave it (image, lake,
pipeline file, credentials). Steps read their dependencies' results from the lake and
store their own there (``results.RunResults``); this process only watches.

Job names are the same for every run of a pipeline and date (``step_job_name``): an
orchestrator that was killed and restarted (the same orchestrating Job) finds its Jobs
and adopts them, whatever their state, and never starts a step twice. A finished Job of
an earlier run for the same date is replaced: running a pipeline again runs it again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.core import contracts as c
from modelyard.pipelines.context import RunSettings
from modelyard.pipelines.definition import Pipeline, Resources, step_pod_labels
from modelyard.pipelines.manifests import (
    StepPodTemplate,
    build_step_job,
    run_selector,
    template_from_pod,
)
from modelyard.pipelines.results import RunResults
from modelyard.pipelines.runner import PipelineRunResult, StepRun, StepStatus

logger = logging.getLogger(__name__)

_SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


class ClusterError(RuntimeError):
    """The orchestrator cannot work where it runs; the message says what is missing."""


@dataclass(frozen=True)
class Orchestrator:
    """Who orchestrates: the pod, the Job that owns it (None for a bare pod), and what
    follows from them."""

    namespace: str
    pod: dict[str, Any]
    job: dict[str, Any] | None

    @property
    def owner(self) -> dict[str, Any]:
        """The owner reference of the step Jobs: deleting the run deletes its steps."""
        owner = self.job or self.pod
        return {
            "apiVersion": "batch/v1" if self.job else "v1",
            "kind": "Job" if self.job else "Pod",
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
        }

    @property
    def run_id(self) -> str:
        return str((self.job or self.pod)["metadata"]["name"])

    @property
    def created(self) -> dt.date:
        """The day (UTC) the run started: its run date unless one was given."""
        stamp = str((self.job or self.pod)["metadata"]["creationTimestamp"])
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(dt.UTC).date()

    @property
    def ttl_seconds_after_finished(self) -> int:
        return int(((self.job or {}).get("spec") or {}).get("ttlSecondsAfterFinished") or 86_400)


def _api() -> Any:
    """An API client: in-cluster credentials in a pod, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as error:
            raise ClusterError(
                "no Kubernetes credentials: neither a service account token (in a pod) nor "
                f"a kubeconfig ({error})"
            ) from None
    return client.ApiClient()


def find_orchestrator(api: Any) -> Orchestrator:
    """Read this pod and its Job from the API server (MODELYARD_POD_NAME and
    MODELYARD_POD_NAMESPACE, from the downward API; HOSTNAME and the service account's
    namespace otherwise)."""
    from kubernetes import client

    name = os.environ.get(c.PipelineEnv.POD_NAME) or os.environ.get("HOSTNAME")
    namespace = os.environ.get(c.PipelineEnv.POD_NAMESPACE)
    if not namespace and os.path.exists(_SA_NAMESPACE_FILE):
        with open(_SA_NAMESPACE_FILE) as handle:
            namespace = handle.read().strip()
    if not name or not namespace:
        raise ClusterError(
            f"the orchestrator needs its pod's name and namespace ({c.PipelineEnv.POD_NAME}, "
            f"{c.PipelineEnv.POD_NAMESPACE}); run it in the pipeline's CronJob"
        )
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    try:
        pod = api.sanitize_for_serialization(core.read_namespaced_pod(name, namespace))
        owners = [
            o
            for o in pod["metadata"].get("ownerReferences") or []
            if o.get("kind") == "Job" and o.get("controller")
        ]
        job = (
            api.sanitize_for_serialization(batch.read_namespaced_job(owners[0]["name"], namespace))
            if owners
            else None
        )
    except client.exceptions.ApiException as error:
        raise ClusterError(
            f"cannot read pod {namespace}/{name} or its Job: {error.status} {error.reason} "
            "(the pipeline's ServiceAccount needs get on pods and jobs)"
        ) from None
    return Orchestrator(namespace, pod, job)


def step_resources_from_env() -> Resources | None:
    text = os.environ.get(c.PipelineEnv.STEP_RESOURCES)
    if not text:
        return None
    try:
        return Resources.model_validate(json.loads(text))
    except ValueError as error:
        raise ClusterError(f"{c.PipelineEnv.STEP_RESOURCES} is not valid: {error}") from None


def _conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        x["type"]: x
        for x in ((job.get("status") or {}).get("conditions") or [])
        if x.get("status") == "True"
    }


def job_finished(job: dict[str, Any]) -> bool:
    return bool({"Complete", "Failed"} & set(_conditions(job)))


def pod_state(pod: dict[str, Any]) -> str:
    """A pod's state as a person reads it: Pending, Running, Succeeded, or why it failed."""
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    if pod["metadata"].get("deletionTimestamp") and phase in {"Pending", "Running"}:
        return "Terminating"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in {None, "ContainerCreating"}:
            return f"{phase} ({waiting['reason']})"
    return phase


def pod_failure(pod: dict[str, Any], timeout: float | None) -> str | None:
    """Why a failed pod failed: the step's own error (its termination message), a
    timeout, or how its container ended."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    if status.get("reason") == "DeadlineExceeded":
        return f"timed out after {timeout:g}s and was stopped" if timeout else "timed out"
    for container in status.get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated") or {}
        if ended:
            message = str(ended.get("message") or "").strip()
            how = f"exit code {ended.get('exitCode')} ({ended.get('reason') or 'Error'})"
            return message.splitlines()[-1] if message else f"the step's container ended: {how}"
    return str(status.get("message") or status.get("reason") or "the pod failed")


@dataclass
class _Watched:
    """One step's Job as the orchestrator follows it."""

    job_name: str
    uid: str | None = None
    job: dict[str, Any] | None = None
    pods: dict[str, str] = field(default_factory=dict)  # name -> last state
    failures: list[str] = field(default_factory=list)
    reported: str = ""


class ClusterRunner:
    """Runs one pipeline once as Jobs; same results and summary as ``PipelineRunner``."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: RunSettings,
        api: Any,
        orchestrator: Orchestrator,
        template: StepPodTemplate,
        *,
        only_steps: list[str] | None = None,
        skip_steps: list[str] | None = None,
        on_update: Callable[[dict[str, StepRun]], None] | None = None,
        default_resources: Resources | None = None,
        poll_seconds: float = 2.0,
    ) -> None:
        from kubernetes import client

        self.pipeline = pipeline
        self.settings = settings
        self.api = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.orchestrator = orchestrator
        self.namespace = orchestrator.namespace
        self.template = template
        self.default_resources = default_resources
        self.poll_seconds = poll_seconds
        self.on_update = on_update or (lambda _steps: None)
        self.run_id = orchestrator.run_id
        names = only_steps or pipeline.order
        for name in [*names, *(skip_steps or [])]:
            pipeline.step(name)
        self.names = [n for n in pipeline.order if n in names and n not in (skip_steps or [])]
        self.steps = {name: StepRun(name) for name in self.names}
        self.watched: dict[str, _Watched] = {}
        self.results = RunResults(settings.lake, pipeline.name, settings.run_date)

    # ------------------------------------------------------------------ the Jobs
    def _job_body(self, name: str) -> dict[str, Any]:
        labels = step_pod_labels(self.pipeline.functions[name])
        return build_step_job(
            self.pipeline.spec,
            self.pipeline.step(name),
            self.template,
            self.settings.run_date,
            run_id=self.run_id,
            default_resources=self.default_resources,
            extra_labels=labels,
            owner=self.orchestrator.owner,
            ttl_seconds_after_finished=self.orchestrator.ttl_seconds_after_finished,
        )

    def _read_job(self, job_name: str) -> dict[str, Any] | None:
        from kubernetes import client

        try:
            job = self.batch.read_namespaced_job(job_name, self.namespace)
        except client.exceptions.ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(self.api.sanitize_for_serialization(job))

    def _ours(self, job: dict[str, Any]) -> bool:
        metadata = job["metadata"]
        owner_uid = self.orchestrator.owner["uid"]
        if any(o.get("uid") == owner_uid for o in metadata.get("ownerReferences") or []):
            return True
        return (metadata.get("annotations") or {}).get(c.ANNOTATION_RUN_ID) == self.run_id

    def _start(self, name: str) -> None:
        """Create the step's Job, or adopt the one already there (see the module doc)."""
        from kubernetes import client

        body = self._job_body(name)
        job_name = body["metadata"]["name"]
        existing = self._read_job(job_name)
        if existing is not None and not self._ours(existing) and job_finished(existing):
            logger.info("job %s: finished in an earlier run for this date; replacing it", job_name)
            self.batch.delete_namespaced_job(
                job_name, self.namespace, propagation_policy="Background"
            )
            while self._read_job(job_name) is not None:
                time.sleep(0.5)
            existing = None
        if existing is None:
            self.results.clear(name)
            try:
                created = self.batch.create_namespaced_job(self.namespace, body)  # type: ignore[arg-type]
                existing = dict(self.api.sanitize_for_serialization(created))
                logger.info("job %s: created for step %s", job_name, name)
            except client.exceptions.ApiException as error:
                if error.status != 409:
                    raise
                existing = self._read_job(job_name)
                if existing is None:
                    raise
        else:
            whose = "this run's" if self._ours(existing) else "another run's, still running,"
            logger.info("job %s: adopted (%s) for step %s", job_name, whose, name)
        watched = _Watched(job_name, existing["metadata"]["uid"], existing)
        self.watched[name] = watched
        step = self.steps[name]
        step.status, step.started, step.attempts = StepStatus.RUNNING, time.monotonic(), 1

    # ------------------------------------------------------------------ watching
    def _poll(self) -> None:
        selector = run_selector(self.pipeline.name, self.settings.run_date)
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=selector)
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        by_name = {
            j["metadata"]["name"]: j for j in self.api.sanitize_for_serialization(jobs)["items"]
        }
        pods_by_uid: dict[str, list[dict[str, Any]]] = {}
        for pod in self.api.sanitize_for_serialization(pods)["items"]:
            uid = (pod["metadata"].get("labels") or {}).get(_CONTROLLER_UID, "")
            pods_by_uid.setdefault(uid, []).append(pod)
        for name, watched in self.watched.items():
            if self.steps[name].status.finished:
                continue
            job = by_name.get(watched.job_name)
            if job is None or job["metadata"]["uid"] != watched.uid:
                self._finish(name, StepStatus.FAILED, f"job {watched.job_name} was deleted")
                continue
            watched.job = job
            self._follow_pods(name, watched, pods_by_uid.get(str(watched.uid), []))
            self._judge(name, watched)

    def _follow_pods(self, name: str, watched: _Watched, pods: list[dict[str, Any]]) -> None:
        timeout = self.pipeline.step(name).timeout_seconds
        seen = set()
        per_index: dict[str, int] = {}
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            seen.add(pod_name)
            index = (pod["metadata"].get("labels") or {}).get(_INDEX_LABEL, "")
            per_index[index] = per_index.get(index, 0) + 1
            state = pod_state(pod)
            if watched.pods.get(pod_name) != state:
                logger.info("job %s: pod %s %s", watched.job_name, pod_name, state)
                watched.pods[pod_name] = state
                failure = pod_failure(pod, timeout)
                if failure:
                    label = name if not index else f"{name}[{index}]"
                    watched.failures.append(f"{label}: {failure}")
        for gone in set(watched.pods) - seen:
            if watched.pods[gone] not in {"Succeeded", "Failed"}:
                logger.info("job %s: pod %s deleted", watched.job_name, gone)
                watched.failures.append(f"{name}: pod {gone} was deleted while it ran")
            del watched.pods[gone]
        step = self.steps[name]
        step.attempts = max([step.attempts, *per_index.values()])

    def _judge(self, name: str, watched: _Watched) -> None:
        job = watched.job or {}
        status = job.get("status") or {}
        summary = (
            f"active {status.get('active', 0)}, succeeded {status.get('succeeded', 0)}, "
            f"failed {status.get('failed', 0)}"
        )
        if summary != watched.reported:
            logger.info("job %s: %s", watched.job_name, summary)
            watched.reported = summary
        conditions = _conditions(job)
        indexes = self.pipeline.step(name).indexes
        if "Complete" in conditions:
            result = self.results.read(name, indexes.completions if indexes else None)
            if result is None:
                self._finish(
                    name,
                    StepStatus.FAILED,
                    f"job {watched.job_name} completed but left no result in the lake "
                    f"({self.results.step_url(name)}): do the step pods share the lake?",
                )
            else:
                self.steps[name].result = result
                self._finish(name, StepStatus.SUCCEEDED, None)
        elif "Failed" in conditions:
            failed = conditions["Failed"]
            timed_out = failed.get("reason") == "DeadlineExceeded" or any(
                "timed out" in f for f in watched.failures[-1:]
            )
            detail = watched.failures[-1] if watched.failures else ""
            reason = f"job {watched.job_name} {failed.get('reason', 'failed')}"
            message = f"{detail} ({reason})" if detail else f"{reason}: {failed.get('message', '')}"
            self._finish(name, StepStatus.TIMED_OUT if timed_out else StepStatus.FAILED, message)

    def _finish(self, name: str, status: StepStatus, error: str | None) -> None:
        step = self.steps[name]
        step.status, step.error, step.ended = status, error, time.monotonic()
        logger.info("step %s %s%s", name, status.value, f": {error}" if error else "")

    # ------------------------------------------------------------------ the DAG
    def _dependencies(self, name: str) -> list[str]:
        return [d for d in self.pipeline.step(name).depends_on if d in self.steps]

    def run(self) -> PipelineRunResult:
        started = time.monotonic()
        spec = self.pipeline.spec
        deadline = started + spec.timeout_seconds if spec.timeout_seconds else None
        logger.info(
            "run %s of pipeline %s for %s: %d step(s) as Jobs in %s",
            self.run_id,
            self.pipeline.name,
            self.settings.run_date,
            len(self.names),
            self.namespace,
        )
        self.on_update(self.steps)
        while not all(step.status.finished for step in self.steps.values()):
            if deadline is not None and time.monotonic() >= deadline:
                self._abandon(f"the pipeline's timeout ({spec.timeout_seconds:g}s) passed")
                break
            self._skip_blocked()
            self._start_ready()
            self.on_update(self.steps)
            if any(s.status is StepStatus.RUNNING for s in self.steps.values()):
                time.sleep(self.poll_seconds)
                self._poll()
            self.on_update(self.steps)
        return PipelineRunResult(
            pipeline=self.pipeline.name,
            run_id=self.run_id,
            steps=self.steps,
            duration=time.monotonic() - started,
        )

    def _skip_blocked(self) -> None:
        for name in self.names:
            step = self.steps[name]
            if step.status is not StepStatus.PENDING:
                continue
            failed = [
                d
                for d in self._dependencies(name)
                if self.steps[d].status.finished
                and self.steps[d].status is not StepStatus.SUCCEEDED
            ]
            if failed:
                step.status = StepStatus.SKIPPED
                step.error = "not started: " + ", ".join(
                    f"{d} {self.steps[d].status.value}" for d in failed
                )

    def _start_ready(self) -> None:
        running = sum(1 for s in self.steps.values() if s.status is StepStatus.RUNNING)
        for name in self.names:
            if running >= self.pipeline.spec.max_parallel:
                return
            step = self.steps[name]
            ready = all(
                self.steps[d].status is StepStatus.SUCCEEDED for d in self._dependencies(name)
            )
            if step.status is StepStatus.PENDING and ready:
                self._start(name)
                running += 1

    def _abandon(self, reason: str) -> None:
        for name in self.names:
            step = self.steps[name]
            if step.status.finished:
                continue
            watched = self.watched.get(name)
            if watched is not None:
                self.batch.delete_namespaced_job(
                    watched.job_name, self.namespace, propagation_policy="Background"
                )
            step.status = StepStatus.TIMED_OUT if step.started else StepStatus.SKIPPED
            step.error, step.ended = reason, time.monotonic()


def run_in_cluster(
    pipeline: Pipeline,
    settings: RunSettings,
    *,
    date_given: bool,
    only_steps: list[str] | None = None,
    skip_steps: list[str] | None = None,
    on_update: Callable[[dict[str, StepRun]], None] | None = None,
    poll_seconds: float = 2.0,
) -> PipelineRunResult:
    """Run ``pipeline`` with every step as a Job; see the module docstring."""
    api = _api()
    orchestrator = find_orchestrator(api)
    if not date_given:
        # The day the run started, also for an orchestrator restarted after midnight.
        settings = RunSettings(
            settings.home, settings.lake, settings.tracking_uri, orchestrator.created
        )
    try:
        template = template_from_pod(orchestrator.pod)
    except (KeyError, ValueError) as error:
        raise ClusterError(f"pod has no 'pipeline' container to copy: {error}") from None
    runner = ClusterRunner(
        pipeline,
        settings,
        api,
        orchestrator,
        template,
        only_steps=only_steps,
        skip_steps=skip_steps,
        on_update=on_update,
        default_resources=step_resources_from_env(),
        poll_seconds=poll_seconds,
    )
    return runner.run()
