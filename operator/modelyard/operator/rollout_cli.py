"""``modelyard rollout status|promote|abort|retry NAME``: a person's handle on a rollout.

promote, abort and retry write an annotation on the ModelDeployment that the operator acts
on (:mod:`~modelyard.operator.canary`); they need the right to patch ModelDeployments.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from modelyard.operator.canary import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION
from modelyard.operator.cli import NamespaceOption, _api_message, _clients, _fail, _obj

rollout_app = typer.Typer(
    help="Follow and steer the rollout of a new model version (spec.rollout).",
    no_args_is_help=True,
)
NameArgument = Annotated[str, typer.Argument(help="The ModelDeployment.")]


def _read(name: str, namespace: str | None) -> tuple[Any, str, dict[str, Any]]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from modelyard.operator.resource import GROUP, PLURAL, VERSION

    api, namespace = _clients(namespace)
    custom = client.CustomObjectsApi(api)
    try:
        md = _obj(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    except ApiException as error:
        if error.status == 404:
            raise _fail(f"there is no ModelDeployment {name!r} in namespace {namespace}") from None
        raise _fail(_api_message(error)) from None
    return custom, namespace, md


def _annotate(custom: Any, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
    from kubernetes.client.exceptions import ApiException

    from modelyard.operator.resource import GROUP, PLURAL, VERSION

    try:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": annotations}}
        )
    except ApiException as error:
        raise _fail(_api_message(error)) from None


def describe(md: dict[str, Any]) -> list[str]:
    """What ``modelyard rollout status`` prints about one ModelDeployment."""
    meta, state = md["metadata"], md.get("status") or {}
    live = (state.get("model") or {}).get("version")
    rollout = state.get("rollout") or {}
    lines = [f"{meta['namespace']}/{meta['name']}: live version {live or '-'}"]
    if not rollout:
        pending = state.get("pending") or {}
        if pending:
            lines.append(f"version {pending.get('version')} awaits approval")
        else:
            lines.append("no rollout in progress")
        return lines
    strategy = rollout.get("strategy") or "RollingUpdate"
    lines.append(
        f"candidate version {rollout.get('version')} ({strategy}, since {rollout.get('since')})"
    )
    if strategy != "Canary":
        lines.append(str(rollout.get("message") or "rolling out"))
        return lines
    steps = ((md.get("spec") or {}).get("rollout") or {}).get("canary", {}).get("steps") or []
    lines += [
        f"phase: {rollout.get('phase')}",
        f"step: {rollout.get('step')} of {len(steps)} (0-based)",
        f"weight: {rollout.get('actualWeight', 0)}% (desired {rollout.get('desiredWeight', 0)}%)",
        f"candidate replicas: {rollout.get('candidateReplicas', '-')}",
    ]
    if rollout.get("pauseReason"):
        lines.append(f"holding: {rollout['pauseReason']}")
    if rollout.get("phase") == "Aborted":
        lines.append(f"aborted ({rollout.get('abortReason')}): {rollout.get('message')}")
    failed = rollout.get("failedMeasurements") or 0
    lines.append(f"analysis: {failed} failed measurement(s)")
    for m in rollout.get("measurements") or []:
        lines.append(f"  {m.get('at')} {m.get('phase')}: {m.get('message')}")
    return lines


@rollout_app.command("status")
def status(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """How the rollout in flight is going.

    Phase, step, weight (actual and desired), candidate version, the latest analysis
    measurements and why the rollout holds."""
    from rich.console import Console

    _, _, md = _read(name, namespace)
    Console(highlight=False).print("\n".join(describe(md)))


def _canary_in_flight(md: dict[str, Any]) -> dict[str, Any]:
    rollout = (md.get("status") or {}).get("rollout") or {}
    meta = md["metadata"]
    where = f"{meta['namespace']}/{meta['name']}"
    if rollout.get("strategy") != "Canary":
        raise _fail(f"no Canary rollout is in flight for {where}")
    if rollout.get("phase") == "Aborted":
        raise _fail(
            f"the rollout of version {rollout.get('version')} of {where} was aborted "
            "already (modelyard rollout retry starts it over)"
        )
    return rollout


@rollout_app.command("promote")
def promote(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Skip the remaining steps of the Canary rollout in flight.

    The candidate takes all the traffic, then becomes live."""
    custom, namespace, md = _read(name, namespace)
    version = str(_canary_in_flight(md)["version"])
    _annotate(custom, namespace, name, {PROMOTE_ANNOTATION: version})
    typer.echo(f"version {version} of {namespace}/{name} is promoted")


@rollout_app.command("abort")
def abort(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Roll the Canary rollout in flight back.

    Weight 0 at once, the candidate scaled down shortly after and recorded as rejected
    (reason Aborted) until a retry."""
    custom, namespace, md = _read(name, namespace)
    version = str(_canary_in_flight(md)["version"])
    _annotate(custom, namespace, name, {ABORT_ANNOTATION: version})
    typer.echo(f"the rollout of version {version} of {namespace}/{name} is aborted")


@rollout_app.command("retry")
def retry(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Start the rollout of the version the reference resolves to over.

    Clears a rejection the operator made (failed rollout or analysis, abort), never a
    person's through a ModelApproval."""
    custom, namespace, _ = _read(name, namespace)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _annotate(
        custom,
        namespace,
        name,
        {RETRY_ANNOTATION: now, PROMOTE_ANNOTATION: None, ABORT_ANNOTATION: None},
    )
    typer.echo(f"the rollout of {namespace}/{name} starts over")
