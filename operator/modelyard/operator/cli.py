"""The operator's commands: ``modelyard operator`` runs it; ``approve``, ``reject`` and
``status`` are what a person uses against a cluster (with their own kubeconfig)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, cast

import typer

NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="Namespace of the ModelDeployment (default: the kubeconfig context's).",
    ),
]


StepOption = Annotated[
    int | None,
    typer.Option(
        help="An approval step of the Canary rollout in flight (its index in "
        "spec.rollout.canary.steps, as modelyard rollout status shows it).",
        min=0,
    ),
]


def register(app: typer.Typer) -> None:
    """Add the operator's commands to the top-level CLI."""
    from modelyard.operator.rollout_cli import rollout_app

    app.add_typer(rollout_app, name="rollout")

    @app.command("operator")
    def run_operator(
        namespace: Annotated[
            list[str] | None,
            typer.Option(
                "--namespace",
                "-n",
                help="Watch only this namespace (repeatable; glob patterns allowed). "
                "Default: all namespaces.",
            ),
        ] = None,
        liveness: Annotated[
            str | None,
            typer.Option(
                help="Serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz.",
            ),
        ] = "http://0.0.0.0:8080/healthz",
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        """Run the Kopf operator that reconciles ModelDeployment resources.

        It uses the in-cluster service account, or $KUBECONFIG outside a cluster.

        Of the replicas running, only the holder of a Lease acts
        (MODELYARD_LEADER_ELECTION_LEASE in MODELYARD_LEADER_ELECTION_NAMESPACE,
        default: the pod's own namespace); the others stand by, serving their
        metrics and liveness endpoint. A replica that loses the Lease exits
        (status 3). MODELYARD_LEADER_ELECTION=false: act at once, alone.
        """
        from modelyard.operator.runtime import run

        run(namespaces=namespace or [], liveness=liveness, verbose=verbose)

    @app.command("approve")
    def approve(
        name: Annotated[str, typer.Argument(help="The ModelDeployment.")],
        namespace: NamespaceOption = None,
        version: Annotated[
            int | None,
            typer.Option(help="The pending version you approve (refused if another is)."),
        ] = None,
        comment: Annotated[str, typer.Option(help="Why: shown in status and MLflow.")] = "",
        step: StepOption = None,
        wait: Annotated[
            bool, typer.Option(help="Wait for the operator's answer and print it.")
        ] = True,
    ) -> None:
        """Approve the version a ModelDeployment holds pending: it rolls out. With --step,
        approve the approval step a Canary rollout holds at: it goes on.

        Creates a ModelApproval whose approver is you, as the API server names you
        (kubectl auth whoami). Needs the modelyard-approver role in the namespace.
        """
        decide(name, namespace, version, comment, "Approved", wait, step)

    @app.command("reject")
    def reject(
        name: Annotated[str, typer.Argument(help="The ModelDeployment.")],
        namespace: NamespaceOption = None,
        version: Annotated[
            int | None,
            typer.Option(help="The pending version you reject (refused if another is)."),
        ] = None,
        comment: Annotated[str, typer.Option(help="Why: shown in status and MLflow.")] = "",
        step: StepOption = None,
        wait: Annotated[
            bool, typer.Option(help="Wait for the operator's answer and print it.")
        ] = True,
    ) -> None:
        """Reject the version a ModelDeployment holds pending (or, with --step, the Canary
        rollout holding at that approval step, which is rolled back): the live one keeps
        serving, and the rejected one is never rolled out while the reference points to
        it (modelyard rollout retry does not undo a person's rejection)."""
        decide(name, namespace, version, comment, "Rejected", wait, step)

    @app.command("status")
    def status(
        namespace: NamespaceOption = None,
        all_namespaces: Annotated[
            bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")
        ] = False,
    ) -> None:
        """What is live, what is pending and since when, and how each deployment is; then
        where each server answers each protocol (status.endpoints under status.url)."""
        show_status(namespace, all_namespaces)


# ---------------------------------------------------------------------- the cluster
def _clients(namespace: str | None) -> tuple[Any, str]:
    """An API client from $KUBECONFIG (read now: the client library reads it once, at
    import) or ~/.kube/config, else the pod's service account; and the namespace."""
    import os

    from kubernetes import client, config

    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if os.path.exists(path):
        api = config.new_client_from_config(config_file=path)
        _, active = config.list_kube_config_contexts(config_file=path)
        default = (active or {}).get("context", {}).get("namespace") or "default"
        return api, namespace or default
    try:
        config.load_incluster_config()
    except config.ConfigException:
        raise _fail(f"no kubeconfig at {path} and not in a pod: set KUBECONFIG") from None
    return client.ApiClient(), namespace or "default"


def _obj(found: object) -> dict[str, Any]:
    """The custom objects API returns JSON objects, typed as ``object``."""
    return dict(cast(dict[str, Any], found))


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


def whoami(api: Any) -> str:
    """The caller's user name, as the API server authenticates them."""
    from kubernetes import client

    review = client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    )
    user = review.status.user_info if review.status is not None else None
    if user is None or not user.username:
        raise ValueError("the API server's SelfSubjectReview names no user")
    return str(user.username)


def _api_message(error: Any) -> str:
    import json

    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(error, "reason", error))


def decide(
    name: str,
    namespace: str | None,
    version: int | None,
    comment: str,
    decision: str,
    wait: bool,
    step: int | None = None,
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from rich.console import Console

    from modelyard.operator.resource import APPROVAL_PLURAL, GROUP, PLURAL, VERSION

    console = Console(highlight=False)
    api, namespace = _clients(namespace)
    custom = client.CustomObjectsApi(api)
    try:
        md = _obj(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    except ApiException as error:
        if error.status == 404:
            raise _fail(f"there is no ModelDeployment {name!r} in namespace {namespace}") from None
        raise _fail(
            f"cannot read ModelDeployment {namespace}/{name}: {_api_message(error)}"
        ) from None
    state = md.get("status") or {}
    pending = state.get("pending") or {}
    live = (state.get("model") or {}).get("version")
    if step is not None:
        pending = _step_pending(state, step, name, namespace)
    if not pending:
        raise _fail(
            f"nothing is pending for {namespace}/{name}"
            + (f" (version {live} is live)" if live else "")
        )
    if version is not None and int(pending["version"]) != version:
        raise _fail(
            f"version {pending['version']} is pending for {namespace}/{name}, not {version}"
        )
    target = int(pending["version"])
    try:
        user = whoami(api)
    except (ApiException, ValueError) as error:
        raise _fail(f"the API server did not say who you are: {_api_message(error)}") from None
    outcome = (
        "it rolls out, and goes live once every replica runs it"
        if decision == "Approved"
        else f"version {live} keeps serving"
        if live
        else "nothing is served"
    )
    verb = "approves" if decision == "Approved" else "rejects"
    console.print(
        f"{user} {verb} version {target} of {namespace}/{name} ({pending.get('reference')}, "
        f"pending since {pending.get('since')}): {outcome}"
    )
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelApproval",
        "metadata": {"name": f"{name}-v{target}-{uuid.uuid4().hex[:6]}"[:253]},
        "spec": {
            "modelDeployment": name,
            "version": target,
            "decision": decision,
            "approver": user,
            **({"step": step} if step is not None else {}),
            **({"comment": comment} if comment else {}),
        },
    }
    try:
        created = _obj(
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, APPROVAL_PLURAL, body)
        )
    except ApiException as error:
        if error.status == 403 and "modelapprovals" in _api_message(error):
            raise _fail(
                f"{user} may not create ModelApprovals in namespace {namespace} "
                "(the modelyard-approver role grants it): " + _api_message(error)
            ) from None
        raise _fail(_api_message(error)) from None
    approval = created["metadata"]["name"]
    console.print(f"modelapproval.modelyard.io/{approval} created")
    if not wait:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _obj(
            custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, APPROVAL_PLURAL, approval
            )
        )
        answer = found.get("status") or {}
        if answer.get("state"):
            console.print(f"the operator: {answer['state']}: {answer.get('message', '')}")
            if answer["state"] != "Applied":
                raise typer.Exit(1)
            return
        time.sleep(1)
    console.print("no answer from the operator within 60s (is it running?)")
    raise typer.Exit(1)


def _step_pending(state: dict[str, Any], step: int, name: str, namespace: str) -> dict[str, Any]:
    """The Canary rollout in flight as the thing decided on, if it holds at ``step``."""
    rollout = state.get("rollout") or {}
    if rollout.get("strategy") != "Canary" or rollout.get("phase") in (None, "Aborted"):
        raise _fail(f"no Canary rollout is in flight for {namespace}/{name}")
    if int(rollout.get("step") or 0) != step:
        raise _fail(
            f"the rollout of version {rollout.get('version')} is at step "
            f"{rollout.get('step')}, not {step}"
        )
    return {
        "version": rollout["version"],
        "reference": rollout.get("reference"),
        "since": rollout.get("stepSince") or rollout.get("since"),
    }


def _condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    for found in (md.get("status") or {}).get("conditions") or []:
        if found.get("type") == type_:
            return dict(found)
    return {}


def show_status(namespace: str | None, all_namespaces: bool) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from rich.console import Console
    from rich.table import Table

    from modelyard.operator.resource import GROUP, PLURAL, VERSION

    api, namespace = _clients(namespace)
    custom = client.CustomObjectsApi(api)
    try:
        if all_namespaces:
            listed = _obj(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
        else:
            listed = _obj(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
        items: list[dict[str, Any]] = list(listed["items"])
    except ApiException as error:
        raise _fail(_api_message(error)) from None
    table = Table(title_justify="left", box=None, pad_edge=False)
    for column in (
        "NAMESPACE",
        "NAME",
        "REFERENCE",
        "LIVE",
        "PENDING",
        "APPROVAL",
        "READY",
        "DRIFT",
    ):
        table.add_column(column)
    for md in sorted(items, key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"])):
        state = md.get("status") or {}
        pending = state.get("pending") or {}
        rollout = state.get("rollout") or {}
        live = (state.get("model") or {}).get("version")
        waiting = (
            f"{pending['version']} since {pending.get('since', '?')}"
            if pending
            else (f"{rollout['version']} rolling out" if rollout else "-")
        )
        approved = _condition(md, "Approved")
        ready = _condition(md, "Ready")
        drift = _condition(md, "DataDrift")
        table.add_row(
            md["metadata"]["namespace"],
            md["metadata"]["name"],
            str(state.get("reference") or "-"),
            str(live or "-"),
            waiting,
            str(approved.get("reason") or "-"),
            f"{ready.get('status', 'Unknown')} ({ready.get('reason', '-')})",
            str(drift.get("reason") or "-"),
        )
    console = Console(width=200, highlight=False)
    if not items:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        console.print(f"no ModelDeployments in {where}")
        return
    console.print(table)
    endpoints = endpoints_table(items)
    if endpoints.row_count:
        console.print()
        console.print(endpoints)


def endpoints_table(items: list[dict[str, Any]]) -> Any:
    """One row per protocol each server speaks, with the URL to send requests to."""
    from rich.table import Table

    table = Table(title_justify="left", box=None, pad_edge=False)
    for column in ("NAMESPACE", "NAME", "PROTOCOL", "URL"):
        table.add_column(column)
    for md in sorted(items, key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"])):
        state = md.get("status") or {}
        base = str(state.get("url") or "").rstrip("/")
        for endpoint in state.get("endpoints") or []:
            table.add_row(
                md["metadata"]["namespace"],
                md["metadata"]["name"],
                str(endpoint.get("protocol", "?")),
                f"{base}{endpoint.get('path', '')}",
            )
    return table
