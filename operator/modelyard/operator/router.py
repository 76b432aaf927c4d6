"""The router: nginx in front of a ModelDeployment's variants while it has a canary or a
shadow. Exact traffic shares and mirrored copies without a service mesh.

Nothing here talks to a cluster. :func:`render_nginx_conf` turns a :class:`RouterPlan`
into nginx's configuration and the ``build_router_*`` functions into the child objects
(ConfigMap, Deployment, PodDisruptionBudget) the handlers apply with
``Kube.apply_owned``, which adds the owner reference as for every other child.

How the configuration does what the router promises:

- **Exact shares.** ``split_clients`` hashes each request's own ``$request_id`` (16
  random bytes per request), so every request is an independent draw: over ``n``
  requests the candidate's share is binomial around its weight, however the clients pool
  their keep-alive connections (a split by connection or by replica count is not).
- **One request id everywhere.** Every variant, the shadow included, receives the same
  ``X-Request-ID`` (the client's own if it sent one, else nginx's ``$request_id``); the
  server logs it with each prediction, so the shadow's answers join the live ones.
- **Mirroring whose answers and latency nobody sees.** nginx's ``mirror`` does not
  finish a request before its mirrored subrequest has: the response goes out, but the
  next request on the same keep-alive connection waits for the shadow. So the mirror
  does not go to the shadow directly. It goes to a second server block of the same nginx
  on loopback (a fresh connection each time), which answers it at once and mirrors
  *that* request to the shadow: what waits for the shadow is a loopback connection
  nobody reuses, never a client's. ``percent`` of the requests are mirrored (a second
  ``split_clients`` on the request id), the others end in the first hop with a 204.
- **Keep-alive upstreams**, with an idle timeout below the servers' own, so nginx never
  sends on a connection the server is closing.
- **Non-root, read-only root filesystem.** Port 8080; pid file and temporary files under
  ``/tmp`` (an emptyDir). ``/healthz`` answers the probes from nginx itself.
- **Changes without a dropped request.** The Deployment's pod template carries a hash
  of the configuration: a new configuration rolls the pods (surge first, old pods
  leave only when new ones are ready, each old pod drains gracefully: the image stops
  nginx with SIGQUIT, after a preStop pause that lets the endpoints update).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.core import contracts as c
from modelyard.core import pods
from modelyard.operator.canary import TrafficPlan
from modelyard.operator.children import client_ingress

#: The app.kubernetes.io/name of router pods.
ROUTER_APP = "modelyard-router"
#: The name of the router's children (ConfigMap, Deployment, PDB) beside ModelDeployment NAME.
ROUTER_SUFFIX = "-router"
#: Where the ConfigMap is mounted, and its key.
CONFIG_DIR = "/etc/modelyard/router"
CONFIG_KEY = "nginx.conf"
#: The loopback port of the hop that mirrors to the shadow (see the module's docstring).
MIRROR_HOP_PORT = 8079
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "50m", "memory": "32Mi"},
    "limits": {"memory": "128Mi"},
}

#: On the router Deployment: the candidate weight its configuration serves, read back
#: from the watch (:func:`served_weight`).
WEIGHT_ANNOTATION = "modelyard.io/candidate-weight"

#: The nginx upstream names of the variants.
STABLE = "stable"
CANDIDATE = "candidate"
SHADOW = "shadow"


@dataclass(frozen=True)
class Backend:
    """A variant's Service (in the ModelDeployment's namespace) and its port."""

    service: str
    port: int = c.SERVICE_PORT


@dataclass(frozen=True)
class RouterPlan:
    """What the router of ModelDeployment ``name`` does: plain data, from the rollout."""

    name: str
    namespace: str
    stable: Backend
    image: str = c.ROUTER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    candidate: Backend | None = None
    #: Percent of requests answered by the candidate, 0-100 (the rest by the stable).
    candidate_weight: int = 0
    shadow: Backend | None = None
    #: Percent of requests also sent to the shadow, 0-100; its answers are discarded.
    shadow_percent: int = 0
    replicas: int = 2
    cluster_domain: str = "cluster.local"
    #: Seconds a variant may take to answer (nginx's proxy_read_timeout).
    upstream_timeout_seconds: int = 60

    def __post_init__(self) -> None:
        for field, value in (
            ("candidate_weight", self.candidate_weight),
            ("shadow_percent", self.shadow_percent),
        ):
            if not 0 <= value <= 100:
                raise ValueError(f"{field} must be within 0-100, got {value}")
        if self.candidate_weight and self.candidate is None:
            raise ValueError("a candidate_weight above 0 needs a candidate Service")
        if self.shadow_percent and self.shadow is None:
            raise ValueError("a shadow_percent above 0 needs a shadow Service")
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")

    @property
    def resource_name(self) -> str:
        return f"{self.name}{ROUTER_SUFFIX}"

    @property
    def selector(self) -> dict[str, str]:
        return router_selector(self.name)

    @property
    def labels(self) -> dict[str, str]:
        return pods.app_labels(ROUTER_APP, self.name, "router")

    def service_address(self, backend: Backend) -> str:
        """``host:port`` of a variant's Service, by its cluster DNS name."""
        return f"{backend.service}.{self.namespace}.svc.{self.cluster_domain}:{backend.port}"


def router_selector(name: str) -> dict[str, str]:
    """The labels of ModelDeployment ``name``'s router pods: its Service selects these
    while the router is in front (and the server pods' selector otherwise)."""
    return {c.LABEL_NAME: ROUTER_APP, c.LABEL_INSTANCE: name}


def from_traffic(
    traffic: TrafficPlan,
    namespace: str,
    *,
    image: str = c.ROUTER_IMAGE,
    image_pull_policy: str = "IfNotPresent",
    cluster_domain: str = "cluster.local",
) -> RouterPlan:
    """The router of the planner's :class:`~modelyard.operator.canary.TrafficPlan` (the
    one place the two meet)."""
    candidate = Backend(traffic.candidate_service) if traffic.candidate_service else None
    shadow = Backend(traffic.shadow_service) if traffic.shadow_service else None
    return RouterPlan(
        name=traffic.service,
        namespace=namespace,
        stable=Backend(traffic.stable_service),
        image=image,
        image_pull_policy=image_pull_policy,
        candidate=candidate,
        candidate_weight=traffic.candidate_weight if candidate is not None else 0,
        shadow=shadow,
        shadow_percent=traffic.shadow_percent if shadow is not None else 0,
        cluster_domain=cluster_domain,
    )


def selects_router(service: Mapping[str, Any] | None, name: str) -> bool:
    """Whether ModelDeployment ``name``'s Service (as watched) sends its clients to the
    router."""
    selector = ((service or {}).get("spec") or {}).get("selector") or {}
    return dict(selector) == router_selector(name)


def _rolled_out(deployment: Mapping[str, Any]) -> bool:
    """Every replica runs the Deployment's current template and is available."""
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= generation
        and int(status.get("updatedReplicas") or 0) == wanted
        and int(status.get("availableReplicas") or 0) >= wanted
        and int(status.get("replicas") or 0) == wanted
    )


def router_ready(deployment: Mapping[str, Any] | None) -> bool:
    """Whether the router may take the clients: all its replicas available (a Service
    moved to it before then would select nothing, or too little)."""
    return deployment is not None and _rolled_out(deployment)


def router_serving(deployment: Mapping[str, Any] | None) -> bool:
    """Whether a router the clients already reach still answers (a pod available)."""
    status = (deployment or {}).get("status") or {}
    return deployment is not None and int(status.get("availableReplicas") or 0) > 0


def served_weight(
    deployment: Mapping[str, Any] | None, service: Mapping[str, Any] | None, name: str
) -> int | None:
    """The candidate's share the clients get now, from the watch: 0 while the Service
    does not select the router; the weight of the router's configuration once every
    router pod runs it; None while its pods move to a new configuration."""
    if deployment is None or not selects_router(service, name):
        return 0
    if not _rolled_out(deployment):
        return None
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(WEIGHT_ANNOTATION, 0))
    except ValueError:
        return None


def _percent(value: int) -> str:
    return f"{value}%"


def render_nginx_conf(
    plan: RouterPlan,
    *,
    address: Callable[[Backend], str] | None = None,
    listen: str = str(c.ROUTER_PORT),
    mirror_hop_port: int = MIRROR_HOP_PORT,
    tmp_dir: str = "/tmp",
) -> str:
    """nginx's whole configuration for ``plan``.

    ``address`` maps a variant to ``host:port`` (default: its Service's cluster DNS
    name); ``listen``, ``mirror_hop_port`` and ``tmp_dir`` exist for running the same
    configuration outside a pod (the integration tests do).
    """
    where = address or plan.service_address
    backends = {STABLE: plan.stable}
    if plan.candidate is not None and plan.candidate_weight:
        backends[CANDIDATE] = plan.candidate
    mirroring = plan.shadow is not None and plan.shadow_percent > 0
    if mirroring and plan.shadow is not None:
        backends[SHADOW] = plan.shadow

    out: list[str] = [
        "# Rendered by the modelyard operator (modelyard.operator.router); do not edit.",
        f"# ModelDeployment {plan.namespace}/{plan.name}: candidate {plan.candidate_weight}%,"
        f" shadow {plan.shadow_percent if mirroring else 0}%.",
        "daemon off;",
        "worker_processes 1;",
        f"pid {tmp_dir}/nginx.pid;",
        "error_log stderr warn;",
        "events { worker_connections 4096; }",
        "http {",
        "  access_log off;",
        "  server_tokens off;",
        f"  client_body_temp_path {tmp_dir}/nginx-body;",
        f"  proxy_temp_path {tmp_dir}/nginx-proxy;",
        f"  fastcgi_temp_path {tmp_dir}/nginx-fastcgi;",
        f"  uwsgi_temp_path {tmp_dir}/nginx-uwsgi;",
        f"  scgi_temp_path {tmp_dir}/nginx-scgi;",
        # Predictions are small; larger bodies are buffered under /tmp rather than refused
        # here: the server's own limit answers them with its message.
        "  client_max_body_size 0;",
        "  keepalive_timeout 75s;",
        "  keepalive_requests 100000;",
        # A client's keep-alive connection is closed after an answer once this old, as the
        # servers do: a client pinned to an old router pod moves on (DRAIN_SECONDS).
        f"  keepalive_time {int(c.DEFAULT_MAX_CONNECTION_AGE)}s;",
        # The request id every variant receives: the client's, else one of nginx's.
        '  map $http_x_request_id $modelyard_request_id { "" $request_id; default'
        " $http_x_request_id; }",
    ]
    for upstream, backend in backends.items():
        out += [
            f"  upstream {upstream} {{",
            f"    server {where(backend)};",
            "    keepalive 64;",
            # Below the servers' own keep-alive timeout (uvicorn's is 5s), so nginx never
            # reuses a connection the server is closing.
            "    keepalive_timeout 4s;",
            "  }",
        ]
    weight = plan.candidate_weight if CANDIDATE in backends else 0
    if 0 < weight < 100:
        out += [
            "  split_clients $request_id $modelyard_variant {",
            f"    {_percent(weight)} {CANDIDATE};",
            f"    * {STABLE};",
            "  }",
        ]
    else:
        only = CANDIDATE if weight == 100 else STABLE
        out.append(f'  map "" $modelyard_variant {{ default {only}; }}')
    if mirroring and plan.shadow_percent < 100:
        out += [
            # A different key than the variant's, so the two draws are independent.
            '  split_clients "${request_id}shadow" $modelyard_mirror {',
            f"    {_percent(plan.shadow_percent)} 1;",
            '    * "";',
            "  }",
        ]
    elif mirroring:
        out.append('  map "" $modelyard_mirror { default 1; }')
    proxy_common = [
        "      proxy_http_version 1.1;",
        '      proxy_set_header Connection "";',
        "      proxy_set_header Host $host;",
        "      proxy_set_header X-Request-ID $modelyard_request_id;",
        "      proxy_connect_timeout 5s;",
        f"      proxy_read_timeout {plan.upstream_timeout_seconds}s;",
        f"      proxy_send_timeout {plan.upstream_timeout_seconds}s;",
    ]
    out += [
        "  server {",
        f"    listen {listen} default_server;",
        f"    location = {c.ROUTER_HEALTH_PATH} {{",
        "      default_type text/plain;",
        '      return 200 "ok\\n";',
        "    }",
        "    location / {",
    ]
    if mirroring:
        out += ["      mirror /_modelyard_mirror;", "      mirror_request_body on;"]
    out += [
        "      proxy_pass http://$modelyard_variant;",
        *proxy_common,
        # Which variant answered, for people reading a response (the server also says
        # its model version in X-Model-Version).
        "      add_header X-Modelyard-Variant $modelyard_variant always;",
    ]
    if mirroring:
        # "1" when a copy of this request went to the shadow (no header otherwise): the
        # mirror's draw, the one the subrequest made (a subrequest shares its variables).
        out.append("      add_header X-Modelyard-Mirrored $modelyard_mirror always;")
    out += [
        "    }",
    ]
    if mirroring:
        out += [
            "    location = /_modelyard_mirror {",
            "      internal;",
            '      if ($modelyard_mirror = "") { return 204; }',
            # A fresh loopback connection each time (no keep-alive upstream): the hop
            # below answers at once, then waits for the shadow on this connection alone.
            f"      proxy_pass http://127.0.0.1:{mirror_hop_port}$request_uri;",
            "      proxy_http_version 1.1;",
            "      proxy_set_header Host $host;",
            "      proxy_set_header X-Request-ID $modelyard_request_id;",
            "      proxy_connect_timeout 1s;",
            "      proxy_read_timeout 5s;",
            "    }",
        ]
    out.append("  }")
    if mirroring:
        out += [
            "  server {",
            f"    listen 127.0.0.1:{mirror_hop_port};",
            "    location / {",
            "      mirror /_modelyard_shadow;",
            "      mirror_request_body on;",
            # Any content handler that answers at once does; stub_status is built in.
            "      stub_status;",
            "    }",
            "    location = /_modelyard_shadow {",
            "      internal;",
            f"      proxy_pass http://{SHADOW}$request_uri;",
            *proxy_common,
            # The hop's client is gone by the time the shadow answers: finish anyway, so
            # the shadow answers (and logs) every mirrored request.
            "      proxy_ignore_client_abort on;",
            "    }",
            "  }",
        ]
    out += ["}", ""]
    return "\n".join(out)


def config_hash(conf: str) -> str:
    return hashlib.sha256(conf.encode()).hexdigest()[:16]


def _meta(plan: RouterPlan) -> dict[str, Any]:
    return {"name": plan.resource_name, "namespace": plan.namespace, "labels": plan.labels}


def build_router_config_map(plan: RouterPlan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(plan),
        "data": {CONFIG_KEY: render_nginx_conf(plan)},
    }


def build_router_deployment(plan: RouterPlan) -> dict[str, Any]:
    conf = render_nginx_conf(plan)
    probe = {"httpGet": {"path": c.ROUTER_HEALTH_PATH, "port": "http"}}
    weight = plan.candidate_weight if plan.candidate is not None else 0
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_meta(plan), "annotations": {WEIGHT_ANNOTATION: str(weight)}},
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": plan.selector},
            "revisionHistoryLimit": 3,
            # A new configuration: new pods first, old ones leave once those are ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": plan.labels,
                    "annotations": {c.ANNOTATION_CONFIG_HASH: config_hash(conf)},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pods.restricted_pod_security_context(),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "router",
                            "image": plan.image,
                            "imagePullPolicy": plan.image_pull_policy,
                            "command": ["nginx", "-c", f"{CONFIG_DIR}/{CONFIG_KEY}"],
                            # Named like the servers' port, so the ModelDeployment's
                            # Service (targetPort: http) moves between them unchanged.
                            "ports": [
                                {"name": "http", "containerPort": c.ROUTER_PORT, "protocol": "TCP"}
                            ],
                            "resources": {k: dict(v) for k, v in DEFAULT_RESOURCES.items()},
                            "readinessProbe": {**probe, "periodSeconds": 2, "failureThreshold": 2},
                            "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
                            # Keep answering while the endpoints stop sending here and the
                            # clients' connections age out (keepalive_time, closed after an
                            # answer); then the image's stop signal (SIGQUIT) drains nginx.
                            "lifecycle": {"preStop": {"sleep": {"seconds": c.DRAIN_SECONDS}}},
                            "securityContext": pods.restricted_container_security_context(),
                            "volumeMounts": [
                                pods.tmp_mount(),
                                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        pods.tmp_volume("256Mi"),
                        {"name": "config", "configMap": {"name": plan.resource_name}},
                    ],
                },
            },
        },
    }


def build_router_pdb(plan: RouterPlan) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(plan),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": plan.selector}},
    }


def build_router_network_policy(plan: RouterPlan, client_namespaces: list[str]) -> dict[str, Any]:
    """The same callers as the servers' own NetworkPolicy admits, on the router's port."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(plan),
        "spec": client_ingress(plan.selector, plan.namespace, client_namespaces, c.ROUTER_PORT),
    }


def router_children(name: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of ModelDeployment ``name``'s router children, in the
    order to delete them (the ConfigMap its pods mount last)."""
    resource = f"{name}{ROUTER_SUFFIX}"
    return [
        ("networking.k8s.io/v1", "NetworkPolicy", resource),
        ("policy/v1", "PodDisruptionBudget", resource),
        ("apps/v1", "Deployment", resource),
        ("v1", "ConfigMap", resource),
    ]


def build_router(plan: RouterPlan) -> list[dict[str, Any]]:
    """Every child of the router, in the order to apply them (the ConfigMap first)."""
    return [build_router_config_map(plan), build_router_deployment(plan), build_router_pdb(plan)]
