"""How a rollout of a new version is going, read from what the watches delivered.

LIVE (``status.model``) is the version that serves all the traffic it should. A new
version is a *candidate* (``status.rollout``) until the server Deployment runs it on
every replica, all of them ready; then it becomes live. A candidate whose pods keep
crashing, or that misses the progress deadline, has failed: the operator rolls back to
the live version and records the candidate as rejected for this deployment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.core import contracts as c
from modelyard.core.model_safety import REASON as UNSAFE
from modelyard.operator.conditions import parse_time

#: A candidate pod restarted this often has failed (a model that cannot load).
CRASH_RESTARTS = 3
COMPLETE = "Complete"
PROGRESSING = "Progressing"
FAILED = "Failed"


#: Why a candidate failed, on the ModelDeployment's conditions and the rejection tag.
ROLLOUT_FAILED = "RolloutFailed"


@dataclass(frozen=True)
class Progress:
    state: str
    message: str
    reason: str = ROLLOUT_FAILED


@dataclass(frozen=True)
class Crash:
    reason: str
    message: str


def _template_version(deployment: Mapping[str, Any]) -> str | None:
    template = (deployment.get("spec") or {}).get("template") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(c.ANNOTATION_MODEL_VERSION)
    return str(value) if value is not None else None


def _pod_version(pod: Mapping[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(c.ANNOTATION_MODEL_VERSION)
    return str(value) if value is not None else None


def crashing(pods: Iterable[Mapping[str, Any]], version: int) -> Crash | None:
    """Why the pods of ``version`` are failing, if they are."""
    for pod in pods:
        if _pod_version(pod) != str(version):
            continue
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            restarts = int(status.get("restartCount") or 0)
            waiting = ((status.get("state") or {}).get("waiting") or {}).get("reason")
            terminated = (status.get("lastState") or {}).get("terminated") or (
                (status.get("state") or {}).get("terminated") or {}
            )
            said = str(terminated.get("message") or "").strip()
            if said.startswith(f"{UNSAFE}:"):
                # The server refused the model before loading it: no restart changes that.
                return Crash(UNSAFE, said.removeprefix(f"{UNSAFE}:").strip())
            if restarts >= CRASH_RESTARTS or waiting in ("CrashLoopBackOff", "ErrImageNeverPull"):
                why = terminated.get("reason") or waiting or "restarts"
                code = terminated.get("exitCode")
                return Crash(
                    ROLLOUT_FAILED,
                    f"pod {pod['metadata']['name']} of version {version} restarted {restarts} "
                    f"times ({why}{f', exit code {code}' if code is not None else ''})"
                    + (f": {said.splitlines()[0][:300]}" if said else ""),
                )
            if waiting in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                return Crash(
                    ROLLOUT_FAILED,
                    f"pod {pod['metadata']['name']} cannot get its image ({waiting})",
                )
    return None


def progress(
    deployment: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    version: int,
    since: str | None,
    deadline_seconds: int,
    now: dt.datetime,
) -> Progress:
    """How the rollout of ``version`` on the server Deployment is going."""
    if deployment is None or _template_version(deployment) != str(version):
        return Progress(PROGRESSING, f"rolling out version {version}")
    crash = crashing(pods, version)
    if crash is not None:
        return Progress(FAILED, crash.message, crash.reason)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    replicas = spec.get("replicas")
    want = int(replicas) if replicas is not None else 1
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    observed = int(status.get("observedGeneration") or 0)
    conditions = {x.get("type"): x for x in status.get("conditions") or []}
    deadline = (conditions.get("Progressing") or {}).get("reason") == "ProgressDeadlineExceeded"
    if observed >= generation and updated >= want and total == updated and available >= want:
        return Progress(COMPLETE, f"version {version} runs on {available}/{want} ready pods")
    started = parse_time(since)
    if deadline or (started is not None and (now - started).total_seconds() > deadline_seconds):
        return Progress(
            FAILED,
            f"version {version} did not become ready within {deadline_seconds}s "
            f"({available}/{want} pods ready, {updated} updated)",
        )
    return Progress(PROGRESSING, f"{updated}/{want} server pods run version {version}")
