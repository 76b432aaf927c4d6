"""Kopf handlers: thin, typed, and all ending in the work queue.

Kopf watches the ModelDeployments and their children and puts what it sees in the
operator's watch cache; a ModelDeployment whose spec changed, or whose server Deployment
did, is queued; worker threads reconcile queued keys (:mod:`modelyard.operator.reconcile`).
One scheduler re-resolves registry references for all of them
(:mod:`modelyard.operator.scheduler`). Everything is created at start-up and kept in
kopf's ``memo``.

Run with ``modelyard operator``, or in tests with
``kopf.testing.KopfRunner(["run", "-m", "modelyard.operator.handlers", ...])``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modelyard.core import contracts as c
from modelyard.core.contracts import RegistryWebhook
from modelyard.core.redaction import install_log_redaction, redact_uri
from modelyard.operator.approvals import Decision, unmatched
from modelyard.operator.canary import CANARY_SUFFIX, rollout_command
from modelyard.operator.children import SERVER_APP
from modelyard.operator.crds import ensure_crds
from modelyard.operator.credentials import ensure_accounts
from modelyard.operator.events import EventQueue
from modelyard.operator.leftovers import LeftoverTags, LeftTags, Sweeper
from modelyard.operator.metrics import OperatorMetrics
from modelyard.operator.reconcile import (
    Key,
    Operator,
    registry_tags,
    release,
    run_reconcile,
    write_answer,
)
from modelyard.operator.resource import (
    APPROVAL_KIND,
    APPROVAL_PLURAL,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
)
from modelyard.operator.rest import Rest
from modelyard.operator.scheduler import Scheduler
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.webhooks import WebhookReceiver
from modelyard.operator.workqueue import WorkQueue

MANAGED_BY = {c.LABEL_MANAGED_BY: c.MANAGED_BY}
#: A restarted operator waits this long before reconciling what it found, so that the
#: children's first listings are in the watch cache by then (and need no apply).
RESUME_DELAY = 3.0
#: Attempts at removing a deleted ModelDeployment's registry tag before letting it go.
DELETE_ATTEMPTS = 3


def _kube_api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # The client reads $KUBECONFIG once, at import; read it now.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


class CurrentDiffBase(kopf.DiffBaseStorage):
    """No diff base kept on the objects: the operator has no creation or update handler
    (every change goes through its watch cache and work queue), so kopf needs none. Kopf's
    annotation cost one more patch of each new ModelDeployment (and a copy of its spec on
    it); with the object itself as its own base, kopf sees no change to handle, while
    deletion (the finalizer and ``on_delete``) works as before."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, $KUBECONFIG (read now, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(
    *, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    # No credentials in a log line, whoever writes it (docs/security.md).
    install_log_redaction()
    # Our own names for what kopf keeps on the objects.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = CurrentDiffBase()
    # Silent watch streams are a known kopf failure: reconnect regularly.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    ours = OperatorSettings.from_env()
    api_client = _kube_api_client()
    if ours.manage_crds:
        try:
            for outcome in ensure_crds(api_client):
                log = logger.warning if outcome.action in ("missing", "newer") else logger.info
                log(outcome.message)
        except ApiException as error:
            # The servers keep working on the installed schema; say what is missing.
            logger.error(
                "could not upgrade the CRDs (%s %s): apply manifests/crds yourself",
                error.status,
                error.reason,
            )
    accounts = None
    if ours.credentials_secret_ref is not None:
        namespace, name = ours.credentials_secret_ref
        # Raises until the Secret can be read (or created): kopf retries the start-up.
        accounts = ensure_accounts(
            Rest(api_client, ours.api_timeout),
            namespace,
            name,
            create=ours.registry_credentials_create,
        )
    # `modelyard operator` made the metrics (served while it stood by for the Lease).
    given: OperatorMetrics | None = memo.get("metrics")
    events = memo.events = EventQueue(api_client, ours.api_timeout)
    op = Operator(
        settings=ours,
        api_client=api_client,
        post_event=events.post,
        accounts=accounts,
        metrics=given or OperatorMetrics(),
    )
    queue: WorkQueue[Key] = WorkQueue(
        lambda key: run_reconcile(op, key),
        workers=ours.reconcile_workers,
        on_error=lambda key, error: logger.error("reconcile of %s/%s failed: %s", *key, error),
    )
    scheduler = Scheduler(
        op, queue.add, interval=ours.resolve_interval, parallelism=ours.reconcile_workers
    )
    events.hold = lambda: queue.new_work > 0
    memo.operator, memo.queue, memo.scheduler = op, queue, scheduler
    memo.leftovers, memo.sweeper = None, None
    if ours.leftover_tags_ref is not None:
        memo.leftovers = LeftoverTags(api_client, *ours.leftover_tags_ref, ours.api_timeout)
        memo.sweeper = Sweeper(op, memo.leftovers, interval=ours.leftover_sweep_interval)
    op.metrics.queue_depth.set_function(lambda: len(queue))
    # `modelyard operator` serves the receiver on every replica (runtime.py): attach.
    given_hooks: WebhookReceiver | None = memo.get("webhooks")
    memo.own_webhooks = None
    if given_hooks is not None:
        given_hooks.attach(scheduler.poke)
    elif ours.webhook_port:
        # Before any thread starts: a port in use fails the start-up with nothing running.
        memo.own_webhooks = memo.webhooks = WebhookReceiver(
            ours.webhook_secret.get_secret_value(),
            scheduler.poke,
            op.metrics,
            tolerance=ours.webhook_tolerance,
        )
        port = memo.own_webhooks.serve(ours.webhook_port)
        logger.info("MLflow webhooks at http://0.0.0.0:%d%s", port, RegistryWebhook.PATH)
    queue.start()
    scheduler.start()
    if memo.sweeper is not None:
        memo.sweeper.start()
    if given is None:  # run without `modelyard operator` (kopf run, tests): no election
        op.metrics.leader.set(1)
    if ours.metrics_port and given is None:
        port = op.metrics.serve(ours.metrics_port)
        logger.info("metrics at http://0.0.0.0:%d/metrics", port)
    logger.info(
        "modelyard operator: resolve interval %ss (webhooks %s), %d workers, default registry %s, "
        "server image %s",
        ours.resolve_interval,
        "on" if memo.get("webhooks") is not None else "off",
        ours.reconcile_workers,
        redact_uri(ours.default_tracking_uri) if ours.default_tracking_uri else "(none)",
        ours.server_image,
    )


@kopf.on.cleanup()
def shut_down(*, memo: kopf.Memo, **_: Any) -> None:
    if memo.get("own_webhooks") is not None:
        memo.own_webhooks.close()
    memo.scheduler.stop()
    if memo.get("sweeper") is not None:
        memo.sweeper.stop()
    memo.queue.stop()
    memo.events.close()
    memo.operator.close()


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name")))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_model_deployment(
    *, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Keep the cache; queue the resource when its spec is new to the operator."""
    op: Operator = memo.operator
    key = _key(body)
    if event.get("type") == "DELETED":
        op.store.remove(KIND, *key)
        return
    op.store.put(KIND, dict(body))
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    if event.get("type") is None:  # the listing when the operator starts: resume
        memo.queue.add_after(key, RESUME_DELAY)
        return
    status = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    if status.get("observedGeneration") != generation or not status.get("conditions"):
        memo.queue.add(key)
    elif rollout_command(body.get("metadata", {}).get("annotations") or {}, status):
        # modelyard rollout promote|abort|retry: an annotation, no new generation.
        memo.queue.add(key)


def _owner_key(body: Mapping[str, Any]) -> Key | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return (str(body.get("metadata", {}).get("namespace") or ""), str(ref["name"]))
    return None


def _on_child(kind: str, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo) -> None:
    op: Operator = memo.operator
    key = _key(body)
    if event.get("type") == "DELETED":
        op.store.remove(kind, *key)
    else:
        op.store.put(kind, dict(body))
    owner = _owner_key(body)
    # A deleted child comes back (new work); the server Deployment's progress moves
    # Ready/Progressing (routine: behind every ModelDeployment with new work).
    if owner is None:
        return
    if event.get("type") == "DELETED":
        memo.queue.add(owner)
    elif kind == "Deployment":
        memo.queue.add(owner, routine=True)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY)
async def on_deployment(
    *, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _on_child("Deployment", event, body, memo)


@kopf.on.event("v1", "services", labels=MANAGED_BY)
async def on_service(
    *, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _on_child("Service", event, body, memo)


@kopf.on.event("v1", "configmaps", labels=MANAGED_BY)
async def on_config_map(
    *, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """The routers' configurations (``<name>-router``)."""
    _on_child("ConfigMap", event, body, memo)


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED_BY)
async def on_hpa(*, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _on_child("HorizontalPodAutoscaler", event, body, memo)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED_BY)
async def on_pdb(*, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _on_child("PodDisruptionBudget", event, body, memo)


@kopf.on.event("batch", "v1", "cronjobs", labels=MANAGED_BY)
async def on_cronjob(
    *, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _on_child("CronJob", event, body, memo)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED_BY)
async def on_network_policy(
    *, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _on_child("NetworkPolicy", event, body, memo)


@kopf.on.event("v1", "pods", labels=MANAGED_BY)
async def on_pod(*, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Server pods: a crashing candidate fails its rollout without waiting for the
    Deployment's progress deadline."""
    op: Operator = memo.operator
    key = _key(body)
    if event.get("type") == "DELETED":
        op.store.remove("Pod", *key)
        return
    op.store.put("Pod", dict(body))
    labels = body.get("metadata", {}).get("labels") or {}
    instance = labels.get(c.LABEL_INSTANCE)
    if instance and labels.get(c.LABEL_NAME) == SERVER_APP:
        # A canary's pods are instance NAME-canary (canary.candidate_name).
        for name in dict.fromkeys((instance, instance.removesuffix(CANARY_SUFFIX))):
            md = op.store.get(KIND, key[0], name) or {}
            if (md.get("status") or {}).get("rollout"):
                memo.queue.add((key[0], name))


@kopf.on.event("v1", "namespaces")
async def on_namespace(
    *, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A namespace's approval label changes the policy of every ModelDeployment in it."""
    op: Operator = memo.operator
    name = str(body.get("metadata", {}).get("name"))
    before = (op.store.get("Namespace", "", name) or {}).get("metadata", {}).get("labels") or {}
    if event.get("type") == "DELETED":
        op.store.remove("Namespace", "", name)
        return
    op.store.put("Namespace", dict(body))
    after = body.get("metadata", {}).get("labels") or {}
    label = c.NAMESPACE_APPROVAL_LABEL
    if event.get("type") is not None and before.get(label) != after.get(label):
        for namespace, md in op.store.keys(KIND):
            if namespace == name:
                memo.queue.add((namespace, md))


@kopf.on.event(GROUP, VERSION, APPROVAL_PLURAL)
def on_approval(*, event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A decision: the ModelDeployment it names is reconciled (the gate reads it from
    the cache); one naming no ModelDeployment is answered as such."""
    op: Operator = memo.operator
    key = _key(body)
    if event.get("type") == "DELETED":
        op.store.remove(APPROVAL_KIND, *key)
        return
    op.store.put(APPROVAL_KIND, dict(body))
    decision = Decision.from_body(body)
    if decision is None or decision.answered:
        return
    target = decision.spec.model_deployment
    if op.store.get(KIND, key[0], target) is not None:
        memo.queue.add((key[0], target))
    elif event.get("type") is not None:  # not in the listing at start: the cache may lag
        answer = unmatched(decision, [n for ns, n in op.store.keys(KIND) if ns == key[0]])
        if answer is not None:
            write_answer(op, answer)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def on_delete(
    *, body: kopf.Body, retry: int, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Remove the registry tag; the children go with their owner references. Whatever
    fails, the deletion is never held up for more than a few attempts."""
    op: Operator = memo.operator
    try:
        release(op, dict(body))
    except Exception as error:
        if retry + 1 < DELETE_ATTEMPTS:
            raise kopf.TemporaryError(
                f"could not remove the registry tag: {error}", delay=5
            ) from error
        message = (
            f"gave up removing the registry tag after {DELETE_ATTEMPTS} attempts ({error}); "
            f"the deletion goes on{_record_left(memo.get('leftovers'), op, dict(body), logger)}"
        )
        logger.warning(message)
        op.event(dict(body), "Warning", "RegistryTagLeft", message)


def _record_left(
    leftovers: LeftoverTags | None, op: Operator, body: dict[str, Any], logger: kopf.Logger
) -> str:
    """Record the tags a deletion leaves for the sweep; what the message says of it."""
    if leftovers is None:
        return " (MODELYARD_LEFTOVER_TAGS is not set: the tag stays)"
    try:
        found = registry_tags(op, body)
        if found is None:
            return ""
        leftovers.record(LeftTags.of(body, *found))
    except Exception as error:  # the deletion goes on regardless
        logger.error("could not record the registry tag left behind: %s", error)
        return f" (and it could not be recorded for a later sweep: {error})"
    return f"; recorded in ConfigMap {leftovers.ref}, a periodic sweep removes it later"
