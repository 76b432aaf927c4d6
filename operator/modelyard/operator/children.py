"""Pure builders of a ModelDeployment's child objects, and readers of their state.

Nothing here talks to a cluster: the functions take typed inputs and return the
manifests (plain dicts) the handlers apply, so they are tested without a cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.core import contracts as c
from modelyard.core import pods
from modelyard.core.registry import ModelVersion
from modelyard.operator.resource import ModelDeploymentSpec

#: The app.kubernetes.io/name of model server pods.
SERVER_APP = "modelyard-server"
DEFAULT_RESOURCES: dict[str, dict[str, int | str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


@dataclass(frozen=True)
class ModelCachePlan:
    """Where a deployment's servers keep their model version (docs/serving.md)."""

    #: The cache's fsspec URL; None with a volume claim (its mount is the cache).
    url: str | None = None
    volume_claim: str | None = None
    #: A Secret whose keys become the server's environment (the cache's credentials).
    secret: str | None = None
    #: The Secret may be missing (the operator-wide default, not every namespace has it).
    secret_optional: bool = False

    @property
    def server_url(self) -> str:
        return self.url or c.MODEL_CACHE_MOUNT


@dataclass(frozen=True)
class ServerPlan:
    """Everything the child builders need for one ModelDeployment."""

    name: str
    namespace: str
    spec: ModelDeploymentSpec
    model: ModelVersion
    tracking_uri: str
    image: str
    image_pull_policy: str
    prediction_log: str | None = None
    #: The Secret whose keys become the environment of the servers and of the checks that
    #: read the log (the log's storage credentials); None: none.
    prediction_log_secret: str | None = None
    #: The Secret with the registry credentials of the servers and of the drift check:
    #: ``spec.registry.credentialsSecretRef``, or the ones the operator writes beside the
    #: ModelDeployment for the installation's registry; None: no credentials.
    credentials_secret: str | None = None
    drift_credentials_secret: str | None = None
    #: None: no model cache (a pod cannot start while the registry is down).
    model_cache: ModelCachePlan | None = None

    @property
    def selector(self) -> dict[str, str]:
        return {c.LABEL_NAME: SERVER_APP, c.LABEL_INSTANCE: self.name}

    @property
    def labels(self) -> dict[str, str]:
        return pods.app_labels(SERVER_APP, self.name, "model-server")


def _meta(plan: ServerPlan) -> dict[str, Any]:
    return {"name": plan.name, "namespace": plan.namespace, "labels": dict(plan.labels)}


def server_env(plan: ServerPlan) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": c.ServerEnv.MODEL_URI, "value": plan.model.uri},
        {"name": c.ServerEnv.MODEL_NAME, "value": plan.model.name},
        {"name": c.ServerEnv.MODEL_VERSION, "value": str(plan.model.version)},
        {"name": c.TRACKING_URI_ENV, "value": plan.tracking_uri},
        # Writable home on a read-only root filesystem.
        {"name": "BENTOML_HOME", "value": "/tmp/bentoml"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if plan.prediction_log:
        env.append({"name": c.ServerEnv.PREDICTION_LOG, "value": plan.prediction_log})
    if plan.spec.server.allow_pickle:
        env.append({"name": c.ServerEnv.ALLOW_PICKLE, "value": "true"})
    if plan.model_cache is not None:
        env.append({"name": c.ServerEnv.MODEL_CACHE, "value": plan.model_cache.server_url})
    if plan.credentials_secret is not None:
        env.extend(pods.credential_env(plan.credentials_secret))
    env.extend({"name": e.name, "value": e.value} for e in plan.spec.server.env)
    return env


def prediction_log_env_from(plan: ServerPlan) -> dict[str, Any]:
    """``envFrom`` with the prediction log's Secret (a container's ``env`` wins over it, so
    the Secret cannot replace what the operator sets), or nothing."""
    if plan.prediction_log_secret is None:
        return {}
    return {"envFrom": [{"secretRef": {"name": plan.prediction_log_secret}}]}


def _cache_volume(plan: ServerPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model cache's volume and mount (none for a URL cache)."""
    cache = plan.model_cache
    if cache is None or cache.volume_claim is None:
        return [], []
    volume = {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.volume_claim}}
    return [volume], [{"name": "model-cache", "mountPath": c.MODEL_CACHE_MOUNT}]


def build_server_deployment(plan: ServerPlan) -> dict[str, Any]:
    server = plan.spec.server
    resources = server.resources or DEFAULT_RESOURCES
    cache_volumes, cache_mounts = _cache_volume(plan)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(plan.selector)},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": plan.spec.rollout.progress_deadline_seconds,
        # Never fewer serving pods than asked for while a new version rolls out.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": {**plan.labels, c.LABEL_REGISTRY_CLIENT: "true"},
                "annotations": {
                    c.ANNOTATION_MODEL_URI: plan.model.uri,
                    c.ANNOTATION_MODEL_VERSION: str(plan.model.version),
                },
            },
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": pods.restricted_pod_security_context(),
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {
                        "name": "server",
                        "image": plan.image,
                        "imagePullPolicy": plan.image_pull_policy,
                        "ports": [
                            {"name": "http", "containerPort": c.SERVER_PORT, "protocol": "TCP"}
                        ],
                        "env": server_env(plan),
                        **prediction_log_env_from(plan),
                        "resources": {k: dict(v) for k, v in resources.items()},
                        # Loading a model can take a while; liveness waits for it.
                        "startupProbe": {
                            "httpGet": {"path": c.LIVENESS_PATH, "port": "http"},
                            "periodSeconds": 2,
                            "failureThreshold": 150,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": c.LIVENESS_PATH, "port": "http"},
                            "periodSeconds": 10,
                            "failureThreshold": 3,
                        },
                        # /readyz answers 200 only once the model is loaded.
                        "readinessProbe": {
                            "httpGet": {"path": c.READINESS_PATH, "port": "http"},
                            "periodSeconds": 2,
                            "failureThreshold": 2,
                        },
                        # Endpoints are removed asynchronously: keep answering while
                        # kube-proxy and the load balancers stop sending traffic here,
                        # and while the connections pinned here are closed after an
                        # answer (c.DRAIN_SECONDS).
                        "lifecycle": {"preStop": {"sleep": {"seconds": c.DRAIN_SECONDS}}},
                        "securityContext": pods.restricted_container_security_context(),
                        "volumeMounts": [pods.tmp_mount(), *cache_mounts],
                    }
                ],
                "volumes": [pods.tmp_volume("4Gi"), *cache_volumes],
            },
        },
    }
    if plan.model_cache is not None and plan.model_cache.secret is not None:
        container = spec["template"]["spec"]["containers"][0]
        # Beside the prediction log's Secret, if any (both may name the same one).
        container.setdefault("envFrom", []).append(
            {
                "secretRef": {
                    "name": plan.model_cache.secret,
                    "optional": plan.model_cache.secret_optional,
                }
            }
        )
    if server.autoscaling is None:
        # With autoscaling the HPA owns the count: leaving the field out of our
        # server-side apply keeps us from fighting it.
        spec["replicas"] = server.desired_replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(plan), "spec": spec}


def build_server_service(plan: ServerPlan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(plan.selector),
            "ports": [
                {"name": "http", "port": c.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def variant_plan(
    plan: ServerPlan,
    name: str,
    model: ModelVersion,
    replicas: int,
    resources: Mapping[str, Mapping[str, int | str]] | None = None,
) -> ServerPlan:
    """The plan of a Deployment beside the stable one (a canary or a shadow): its own
    name and pods (``app.kubernetes.io/instance`` is ``name``), ``model``, a fixed
    number of replicas and no autoscaling; the stable's resources unless given."""
    update: dict[str, Any] = {"replicas": replicas, "autoscaling": None}
    if resources is not None:
        update["resources"] = {k: dict(v) for k, v in resources.items()}
    server = plan.spec.server.model_copy(update=update)
    spec = plan.spec.model_copy(update={"server": server})
    return dataclasses.replace(plan, name=name, model=model, spec=spec)


def build_stable_service(plan: ServerPlan, name: str) -> dict[str, Any]:
    """A Service ``name`` of the stable pods only, for a router in front of them."""
    service = build_server_service(plan)
    service["metadata"]["name"] = name
    return service


def ready_replicas(deployment: Mapping[str, Any] | None, version: int) -> int:
    """Ready pods of a Deployment whose template runs ``version`` and is fully rolled out
    (0 while it moves to that template)."""
    if deployment is None:
        return 0
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    if (template.get("annotations") or {}).get(c.ANNOTATION_MODEL_VERSION) != str(version):
        return 0
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return 0
    return min(int(status.get("availableReplicas") or 0), int(status.get("updatedReplicas") or 0))


def build_server_hpa(plan: ServerPlan) -> dict[str, Any] | None:
    autoscaling = plan.spec.server.autoscaling
    if autoscaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(plan),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.target_cpu_utilization_percentage,
                        },
                    },
                }
            ],
        },
    }


def build_server_pdb(plan: ServerPlan) -> dict[str, Any] | None:
    """A PodDisruptionBudget once there is more than one pod to keep."""
    server = plan.spec.server
    most = server.autoscaling.max_replicas if server.autoscaling else server.desired_replicas
    if most <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(plan),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(plan.selector)}},
    }


def build_server_network_policy(plan: ServerPlan, client_namespaces: list[str]) -> dict[str, Any]:
    """Who may call the servers: pods of their own namespace and of ``client_namespaces``
    (the installation's own, and those its values allow). Everything else is refused
    where the cluster enforces NetworkPolicy; the kubelet's probes come from the node and
    are not affected."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(plan),
        "spec": client_ingress(plan.selector, plan.namespace, client_namespaces, c.SERVER_PORT),
    }


def client_ingress(
    selector: Mapping[str, str], namespace: str, client_namespaces: list[str], port: int
) -> dict[str, Any]:
    """A NetworkPolicy spec: the pods ``selector`` picks take ``port`` from pods of their
    own namespace and of ``client_namespaces`` only."""
    peers: list[dict[str, Any]] = [{"podSelector": {}}]
    peers += [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        for ns in sorted(set(client_namespaces) - {namespace})
    ]
    return {
        "podSelector": {"matchLabels": dict(selector)},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": peers, "ports": [{"port": port, "protocol": "TCP"}]}],
    }


def server_url(name: str, namespace: str, cluster_domain: str) -> str:
    return f"http://{name}.{namespace}.svc.{cluster_domain}"


@dataclass(frozen=True)
class ServerHealth:
    """What the server Deployment's status says, as conditions will say it."""

    ready: bool
    progressing: bool
    degraded: bool
    reason: str
    message: str


def deployment_health(deployment: Mapping[str, Any] | None) -> ServerHealth:
    """Read a server Deployment's status; level-based, no history needed. Ready means
    serving: every wanted replica available, whichever version it runs (a rolling update
    with maxUnavailable 0 never serves less)."""
    if deployment is None:
        return ServerHealth(
            False, True, False, "Creating", "the server Deployment is being created"
        )
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    want = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    observed = int(status.get("observedGeneration") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    progress = conds.get("Progressing") or {}
    serving = want > 0 and available >= want
    if progress.get("reason") == "ProgressDeadlineExceeded":
        return ServerHealth(
            ready=serving,
            progressing=False,
            degraded=True,
            reason="ProgressDeadlineExceeded",
            message="the new server pods did not become ready in time: "
            + str(progress.get("message", "")),
        )
    if want == 0:
        return ServerHealth(False, False, False, "ScaledToZero", "spec.server.replicas is 0")
    if observed < int(meta.get("generation") or 0) or updated < want or total > updated:
        return ServerHealth(
            ready=serving,
            progressing=True,
            degraded=False,
            reason="RollingOut",
            message=f"{updated}/{want} server pods run the new template, {available} ready",
        )
    if available < want:
        return ServerHealth(
            ready=False,
            progressing=True,
            degraded=False,
            reason="PodsNotReady",
            message=f"{available}/{want} server pods are ready",
        )
    return ServerHealth(True, False, False, "Serving", f"{available}/{want} server pods are ready")
