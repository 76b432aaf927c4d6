"""The operator against a real API server and a real MLflow registry."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from mlflow import MlflowClient
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.core.contracts import deployed_tag_key
from tests.support.kube import GROUP, PLURAL, VERSION, ModelDeployments, condition, wait_for
from tests.support.operator import running_operator

pytestmark = pytest.mark.integration

RESOLVE_INTERVAL = 2.0  # MODELYARD_RESOLVE_INTERVAL in conftest


class Cluster(ModelDeployments):
    """What a user looks at, through the API."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        super().__init__(api_client, namespace)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    def deployment(self, name: str) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment(name, self.ns)

    def env(self, name: str) -> dict[str, str]:
        container = self.deployment(name).spec.template.spec.containers[0]
        return {e.name: e.value for e in container.env if e.value is not None}

    def events(self, name: str) -> list[str]:
        evs = self.core.list_namespaced_event(
            self.ns,
            field_selector=f"involvedObject.name={name},involvedObject.kind=ModelDeployment",
        )
        return [f"{e.reason}: {e.message}" for e in evs.items]


@pytest.fixture
def k8s(api_client: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


def test_serves_the_pinned_version_and_reports_it(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=1)
    k8s.create(
        "churn",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
        },
    )
    md = wait_for(
        "status.model",
        lambda: k8s.md("churn") if k8s.md("churn").get("status", {}).get("model") else None,
    )
    dep = k8s.deployment("churn")
    env = k8s.env("churn")
    assert env["MODELYARD_MODEL_URI"] == f"models:/{model.name}/1"  # pinned, never the alias
    assert env["MLFLOW_TRACKING_URI"] == mlflow_server.url
    assert dep.spec.template.spec.containers[0].image == "modelyard/server:test"
    assert dep.metadata.owner_references[0].kind == "ModelDeployment"
    svc = k8s.core.read_namespaced_service("churn", k8s.ns)
    assert svc.spec.selector == dep.spec.selector.match_labels

    status = md["status"]
    assert status["observedGeneration"] == md["metadata"]["generation"]
    assert status["reference"] == "alias:champion"
    assert status["model"]["version"] == 1
    assert status["model"]["runId"] == model.run_ids[0]
    assert status["model"]["uri"] == f"models:/{model.name}/1"
    assert status["model"]["datasets"][0]["source"] == f"file:///lake/{model.name}/date=2026-11-01"
    assert status["model"]["datasets"][0]["context"] == "training"
    assert status["url"] == f"http://churn.{k8s.ns}.svc.cluster.local"
    # Which protocols the server speaks, and where (the API server kept the field).
    assert status["endpoints"] == [
        {"protocol": "bentoml", "path": "/predict"},
        {"protocol": "mlflow", "path": "/invocations"},
        {"protocol": "v2", "path": f"/v2/models/{model.name}/infer"},
    ]
    shown = CliRunner().invoke(app, ["status", "-n", k8s.ns])
    assert shown.exit_code == 0, shown.output
    rows = [line.split() for line in shown.output.splitlines() if "churn" in line]
    assert [k8s.ns, "churn", "v2", f"{status['url']}/v2/models/{model.name}/infer"] in rows
    assert [k8s.ns, "churn", "mlflow", f"{status['url']}/invocations"] in rows
    assert condition(md, "ModelResolved")["status"] == "True"
    # The version went live once its pods were ready (reported by the kubelet stand-in).
    md = k8s.wait_md("churn", "Ready", lambda m: condition(m, "Ready").get("status") == "True")
    assert condition(md, "Progressing")["status"] == "False"
    assert [h["version"] for h in status["history"]] == [1]

    # The registry answers "where is version 1 deployed?"
    tags = MlflowClient(mlflow_server.url).get_model_version(model.name, "1").tags
    assert deployed_tag_key(k8s.ns, "churn") in tags
    wait_for("the RollingOut event", lambda: any("RollingOut" in e for e in k8s.events("churn")))


def test_follows_the_alias_when_it_moves(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=2)
    k8s.create(
        "fraud",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
        },
    )
    wait_for(
        "version 1", lambda: k8s.md("fraud").get("status", {}).get("model", {}).get("version") == 1
    )

    MlflowClient(mlflow_server.url).set_registered_model_alias(model.name, "champion", "2")
    # Within one resolve interval (2 s in these tests) plus slack.
    wait_for(
        "the Deployment to follow the alias",
        lambda: k8s.env("fraud")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/2",
        timeout=15,
    )
    md = k8s.wait_md("fraud", "the history", lambda m: len(m["status"]["history"]) == 2)
    assert [h["version"] for h in md["status"]["history"]] == [2, 1]
    assert "moved from version 1 to 2" in md["status"]["history"][0]["reason"]
    wait_for(
        "an Event about version 2",
        lambda: any("version 2" in e and "RollingOut" in e for e in k8s.events("fraud")),
    )
    mlflow = MlflowClient(mlflow_server.url)
    key = deployed_tag_key(k8s.ns, "fraud")
    assert key in mlflow.get_model_version(model.name, "2").tags
    assert key not in mlflow.get_model_version(model.name, "1").tags


def test_fixed_version_and_autoscaling_children(
    k8s: Cluster, operator: Any, register_model: Callable[..., Any], mlflow_server: Any
) -> None:
    model = register_model(n=2, alias=None)
    k8s.create(
        "scaled",
        {
            "model": {"name": model.name, "version": 2},
            "registry": {"trackingUri": mlflow_server.url},
            "server": {
                "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
                "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}},
            },
        },
    )
    hpa = wait_for(
        "the HPA",
        lambda: k8s.autoscaling.read_namespaced_horizontal_pod_autoscaler("scaled", k8s.ns),
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    assert hpa.spec.metrics[0].resource.target.average_utilization == 70
    pdb = k8s.policy.read_namespaced_pod_disruption_budget("scaled", k8s.ns)
    assert pdb.spec.max_unavailable == 1
    dep = k8s.deployment("scaled")
    assert k8s.env("scaled")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/2"
    assert dep.spec.template.spec.containers[0].resources.requests == {
        "cpu": "200m",
        "memory": "300Mi",
    }

    # Back to one fixed replica: the HPA and the PDB go away.
    k8s.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        k8s.ns,
        PLURAL,
        "scaled",
        {"spec": {"server": {"autoscaling": None, "replicas": 1}}},
    )
    wait_for("one replica", lambda: k8s.deployment("scaled").spec.replicas == 1)
    wait_for(
        "the HPA to be deleted",
        lambda: not k8s.autoscaling.list_namespaced_horizontal_pod_autoscaler(k8s.ns).items,
    )
    wait_for(
        "the PDB to be deleted",
        lambda: not k8s.policy.list_namespaced_pod_disruption_budget(k8s.ns).items,
    )


def test_switching_to_autoscaling_never_drops_below_the_replicas_it_had(
    k8s: Cluster, operator: Any, register_model: Callable[..., Any], mlflow_server: Any
) -> None:
    """An apply that stops setting spec.replicas used to reset it to 1 before the HPA
    existed: the server fell from 4 pods to 1 for a while."""
    import threading

    from kubernetes import watch

    model = register_model(n=1, alias=None)
    spec = {
        "model": {"name": model.name, "version": 1},
        "registry": {"trackingUri": mlflow_server.url},
        "server": {"replicas": 4},
    }
    k8s.create("switch", spec)
    wait_for("four replicas", lambda: k8s.deployment("switch").spec.replicas == 4)
    since = k8s.deployment("switch").metadata.resource_version

    counts: list[int] = []
    w = watch.Watch()

    def follow() -> None:
        for event in w.stream(
            k8s.apps.list_namespaced_deployment,
            k8s.ns,
            field_selector="metadata.name=switch",
            resource_version=since,
            timeout_seconds=120,
        ):
            counts.append(int(event["object"].spec.replicas))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    autoscaling = {"minReplicas": 4, "maxReplicas": 6}
    k8s.patch_spec("switch", {"server": {"replicas": None, "autoscaling": autoscaling}})
    wait_for(
        "the HPA",
        lambda: k8s.autoscaling.read_namespaced_horizontal_pod_autoscaler("switch", k8s.ns),
    )
    # The apply that dropped spec.replicas has happened (the template hash changed).
    wait_for(
        "the Deployment applied without replicas",
        lambda: "replicas" not in str(managed_by_operator(k8s.deployment("switch"))),
    )
    time.sleep(3)  # what followed the apply reaches the watch
    w.stop()
    thread.join(10)
    assert counts, "the watch saw no change to the Deployment"
    assert min(counts) >= 4, f"the replica count fell: {counts}"
    assert k8s.deployment("switch").spec.replicas == 4


def managed_by_operator(deployment: client.V1Deployment) -> Any:
    return [
        f.fields_v1
        for f in deployment.metadata.managed_fields or []
        if f.manager == "modelyard-operator"
    ]


@pytest.mark.parametrize(
    ("model_ref", "reason", "message"),
    [
        ({"alias": "champion"}, "ModelNotFound", "not found"),
        ({"alias": "nobody-set-this"}, "ModelNotFound", "nobody-set-this"),
        ({"version": 99}, "ModelNotFound", "99"),
    ],
)
def test_unresolvable_references_are_reported_and_nothing_is_created(
    k8s: Cluster,
    operator: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
    model_ref: dict[str, Any],
    reason: str,
    message: str,
) -> None:
    model = register_model(n=1, alias=None)
    # The first case names a model that does not exist at all.
    name = "no-such-model" if model_ref == {"alias": "champion"} else model.name
    k8s.create(
        "broken",
        {"model": {"name": name, **model_ref}, "registry": {"trackingUri": mlflow_server.url}},
    )
    md = k8s.wait_md("broken", "ModelResolved=False", lambda m: condition(m, "ModelResolved"))
    resolved = condition(md, "ModelResolved")
    assert resolved["status"] == "False"
    assert resolved["reason"] == reason
    assert message in resolved["message"]
    assert condition(md, "Ready")["status"] == "False"
    assert not k8s.apps.list_namespaced_deployment(k8s.ns).items


def test_missing_credentials_secret_is_reported(
    k8s: Cluster, operator: Any, register_model: Callable[..., Any], mlflow_server: Any
) -> None:
    model = register_model(n=1)
    spec = {
        "model": {"name": model.name, "alias": "champion"},
        "registry": {
            "trackingUri": mlflow_server.url,
            "credentialsSecretRef": {"name": "mlflow-creds"},
        },
    }
    k8s.create("creds", spec)
    md = k8s.wait_md("creds", "CredentialsNotFound", lambda m: condition(m, "ModelResolved"))
    assert condition(md, "ModelResolved")["reason"] == "CredentialsNotFound"
    assert "mlflow-creds" in condition(md, "ModelResolved")["message"]

    # Once the Secret exists, the retry resolves and the server gets the keys from it.
    k8s.core.create_namespaced_secret(
        k8s.ns,
        {
            "metadata": {"name": "mlflow-creds"},
            "stringData": {"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"},
        },
    )
    wait_for("the Deployment", lambda: k8s.deployment("creds"), timeout=60)
    env = k8s.deployment("creds").spec.template.spec.containers[0].env
    refs = {e.name: e.value_from.secret_key_ref.name for e in env if e.value_from}
    assert refs["MLFLOW_TRACKING_PASSWORD"] == "mlflow-creds"
    assert all(e.value is None for e in env if e.name.startswith("MLFLOW_TRACKING_P"))


def test_registry_outage_keeps_the_server_running(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    private_mlflow: Any,
) -> None:
    model = private_mlflow.register()
    k8s.create(
        "steady",
        {
            "model": {"name": model, "alias": "champion"},
            "registry": {"trackingUri": private_mlflow.url},
        },
    )
    wait_for("status.model", lambda: k8s.md("steady").get("status", {}).get("model"))
    before = k8s.deployment("steady")

    private_mlflow.stop()
    md = k8s.wait_md(
        "steady",
        "RegistryUnavailable",
        lambda m: condition(m, "ModelResolved").get("reason") == "RegistryUnavailable",
        timeout=60,
    )
    assert condition(md, "ModelResolved")["status"] == "False"
    assert md["status"]["model"]["version"] == 1  # still says what is live
    after = k8s.deployment("steady")
    assert after.metadata.resource_version == before.metadata.resource_version
    assert k8s.env("steady")["MODELYARD_MODEL_URI"] == f"models:/{model}/1"


def test_a_child_the_api_server_refuses_shows_its_message_and_is_retried(
    k8s: Cluster, operator: Any, register_model: Callable[..., Any], mlflow_server: Any
) -> None:
    """A ResourceQuota of zero Services: the API server's own message is Ready's, with a
    Warning Event; once the quota is gone the retry creates the Service."""
    k8s.core.create_namespaced_resource_quota(
        k8s.ns, {"metadata": {"name": "no-services"}, "spec": {"hard": {"services": "0"}}}
    )
    wait_for(
        "the quota controller to count the namespace",
        lambda: k8s.core.read_namespaced_resource_quota("no-services", k8s.ns).status.hard,
        timeout=60,
    )
    model = register_model(n=1)
    k8s.create(
        "quota",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
        },
    )
    md = k8s.wait_md(
        "quota",
        "Ready=False ApplyFailed",
        lambda m: condition(m, "Ready").get("reason") == "ApplyFailed",
    )
    ready = condition(md, "Ready")
    assert ready["status"] == "False"
    assert "exceeded quota: no-services" in ready["message"], ready["message"]
    assert "Service quota" in ready["message"], ready["message"]
    # The model resolved: only the apply failed, and kubectl get md says so.
    assert condition(md, "ModelResolved")["status"] == "True"
    events = wait_for(
        "the ApplyFailed Event",
        lambda: [e for e in k8s.events("quota") if e.startswith("ApplyFailed: ")],
        timeout=30,
    )
    assert "exceeded quota: no-services" in events[0]

    k8s.core.delete_namespaced_resource_quota("no-services", k8s.ns)

    def service() -> bool:
        found = k8s.core.list_namespaced_service(k8s.ns, field_selector="metadata.name=quota")
        return bool(found.items)

    wait_for("the Service, retried once the quota is gone", service, timeout=120)
    k8s.wait_md(
        "quota",
        "Ready's reason past ApplyFailed",
        lambda m: condition(m, "Ready").get("reason") not in (None, "ApplyFailed"),
        timeout=60,
    )


def test_idle_passes_write_nothing_and_read_each_alias_once(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    """Nothing changes: scheduler passes make no Kubernetes write and no registry write,
    and read the registry once per distinct alias, however many follow it; a pinned
    version is not read again at all."""
    model = register_model(n=1)
    registry = {"trackingUri": mlflow_server.url}
    followers = ("idle-a", "idle-b", "idle-c")
    for name in followers:
        k8s.create(name, {"model": {"name": model.name, "alias": "champion"}, "registry": registry})
    k8s.create("idle-pinned", {"model": {"name": model.name, "version": 1}, "registry": registry})
    for name in (*followers, "idle-pinned"):
        k8s.wait_md(name, "Ready", lambda m: condition(m, "Ready").get("status") == "True", 60)

    # Settled: no write for a few resolve intervals (the pods' status moves Ready once).
    last, since = -1.0, time.monotonic()
    while time.monotonic() - since < 3 * RESOLVE_INTERVAL:
        now = operator.metric("modelyard_operator_api_writes_total")
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.5)

    def counts() -> dict[str, float]:
        return {
            "passes": operator.metric("modelyard_operator_scheduler_passes_total"),
            "api writes": operator.metric("modelyard_operator_api_writes_total"),
            "resolves": operator.metric(
                "modelyard_operator_registry_requests_total", kind="resolve"
            ),
            "registry requests": operator.metric("modelyard_operator_registry_requests_total"),
            "reconciles": operator.metric("modelyard_operator_reconciles_total"),
        }

    before = counts()
    operator.wait_metric("modelyard_operator_scheduler_passes_total", before["passes"] + 5)
    after = counts()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["api writes"] == 0, delta
    assert delta["reconciles"] == 0, delta
    # One alias followed by three: one read per pass (a pass in flight at either end may
    # add one); no tag write, no lineage read, nothing for the pinned version.
    assert delta["passes"] <= delta["resolves"] + 1, delta
    assert delta["resolves"] <= delta["passes"] + 1, delta
    assert delta["registry requests"] == delta["resolves"], delta


def test_operator_restart_changes_no_child(
    k8s: Cluster, kubelet: Any, crd: Any, register_model: Callable[..., Any], mlflow_server: Any
) -> None:
    model = register_model(n=1)
    spec = {
        "model": {"name": model.name, "alias": "champion"},
        "registry": {"trackingUri": mlflow_server.url},
        "server": {"replicas": 2},
    }

    def children() -> dict[str, str]:
        found = {}
        for kind, items in (
            ("Deployment", k8s.apps.list_namespaced_deployment(k8s.ns).items),
            ("Service", k8s.core.list_namespaced_service(k8s.ns).items),
            ("PodDisruptionBudget", k8s.policy.list_namespaced_pod_disruption_budget(k8s.ns).items),
            ("NetworkPolicy", k8s.networking.list_namespaced_network_policy(k8s.ns).items),
        ):
            for obj in items:
                found[f"{kind}/{obj.metadata.name}"] = obj.metadata.resource_version
        return found

    with running_operator(k8s.ns) as first_operator:
        k8s.create("steady", spec)
        wait_for("status.model", lambda: k8s.md("steady").get("status", {}).get("model"))
        wait_for("the PDB", lambda: k8s.policy.list_namespaced_pod_disruption_budget(k8s.ns).items)
        first_operator.wait_metric("modelyard_operator_scheduler_passes_total", 2)
        first = children()
        md_version = k8s.md("steady")["metadata"]["resourceVersion"]
    assert set(first) == {
        "Deployment/steady",
        "Service/steady",
        "PodDisruptionBudget/steady",
        "NetworkPolicy/steady",
    }

    # Every write the restarted operator makes shows on a watch from here on.
    watched = watch_writes(k8s, since=max(int(v) for v in [*first.values(), md_version]))
    with running_operator(k8s.ns) as second_operator:
        # Its pass over what it found on start, then scheduler passes of its own.
        second_operator.wait_metric("modelyard_operator_reconciles_total", 1)
        second_operator.wait_metric("modelyard_operator_scheduler_passes_total", 2)
        assert second_operator.metric("modelyard_operator_api_writes_total") == 0
    assert watched() == []  # no child and no status rewritten
    assert children() == first


def watch_writes(k8s: Cluster, since: int) -> Callable[[], list[str]]:
    """Start watching the namespace's ModelDeployments and children from resourceVersion
    ``since``; the returned function stops and says what changed."""
    import threading

    from kubernetes import watch

    seen: list[str] = []
    watchers: list[watch.Watch] = []
    lists = (
        k8s.apps.list_namespaced_deployment,
        k8s.core.list_namespaced_service,
        k8s.policy.list_namespaced_pod_disruption_budget,
    )

    def follow(list_fn: Any, *args: Any) -> None:
        w = watch.Watch()
        watchers.append(w)
        for event in w.stream(list_fn, *args, resource_version=str(since), timeout_seconds=300):
            obj = event["object"]
            meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
            name = meta["name"] if isinstance(meta, dict) else meta.name
            seen.append(f"{event['type']} {name}")

    threads = [threading.Thread(target=follow, args=(fn, k8s.ns), daemon=True) for fn in lists]
    threads.append(
        threading.Thread(
            target=follow,
            args=(k8s.custom.list_namespaced_custom_object, GROUP, VERSION, k8s.ns, PLURAL),
            daemon=True,
        )
    )
    for thread in threads:
        thread.start()

    def stop() -> list[str]:
        time.sleep(1)  # events in flight reach the watch
        for w in watchers:
            w.stop()
        return list(seen)

    return stop


def test_deletion_removes_children_and_the_registry_tag(
    k8s: Cluster,
    kubelet: Any,
    operator: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=1)
    k8s.create(
        "gone",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
        },
    )
    wait_for("status.model", lambda: k8s.md("gone").get("status", {}).get("model"))
    mlflow = MlflowClient(mlflow_server.url)
    key = deployed_tag_key(k8s.ns, "gone")
    assert key in mlflow.get_model_version(model.name, "1").tags

    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL, "gone")
    wait_for(
        "the tag to be removed", lambda: key not in mlflow.get_model_version(model.name, "1").tags
    )
    wait_for(
        "the ModelDeployment to go",
        lambda: (
            not k8s.custom.list_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL)["items"]
        ),
        timeout=90,
    )
    # The garbage collector removes what the owner references point at.
    wait_for(
        "the Deployment to be collected",
        lambda: not k8s.apps.list_namespaced_deployment(k8s.ns).items,
        timeout=60,
    )
    wait_for(
        "the Service to be collected",
        lambda: not k8s.core.list_namespaced_service(k8s.ns).items,
        timeout=60,
    )


def test_deletion_goes_on_when_the_registry_is_down(
    k8s: Cluster, kubelet: Any, operator: Any, private_mlflow: Any
) -> None:
    """An error in the delete path (here the registry refusing connections) is retried a
    few times, then the finalizer goes with a Warning Event: the deletion, and with it a
    namespace's, never hangs."""
    model = private_mlflow.register()
    k8s.create(
        "orphan",
        {
            "model": {"name": model, "alias": "champion"},
            "registry": {"trackingUri": private_mlflow.url},
        },
    )
    wait_for("status.model", lambda: k8s.md("orphan").get("status", {}).get("model"))
    assert "modelyard.io/finalizer" in k8s.md("orphan")["metadata"]["finalizers"]
    private_mlflow.stop()

    started = time.monotonic()
    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL, "orphan")

    def names() -> list[str]:
        listed = k8s.custom.list_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL)
        return [md["metadata"]["name"] for md in listed["items"]]

    wait_for(
        "the ModelDeployment to go although its registry is down",
        lambda: "orphan" not in names(),
        timeout=120,
    )
    assert time.monotonic() - started < 120
    warnings = [e for e in k8s.events("orphan") if e.startswith("RegistryTagLeft:")]
    assert warnings, k8s.events("orphan")
    assert "gave up removing the registry tag after 3 attempts" in warnings[0]


#: The ConfigMap the sweeping operator records left tags in (the test's namespace stands
#: in for the operator's own).
LEFTOVERS = "leftover-tags"


@pytest.fixture
def sweeping_operator(namespace: str, crd: Any) -> Iterator[Any]:
    """The operator recording the tags deletions leave and sweeping them every second."""
    with running_operator(
        namespace,
        MODELYARD_LEFTOVER_TAGS=f"{namespace}/{LEFTOVERS}",
        MODELYARD_LEFTOVER_SWEEP_INTERVAL="1",
    ) as runner:
        yield runner


def leftovers(k8s: Cluster) -> dict[str, Any]:
    try:
        found = k8s.core.read_namespaced_config_map(LEFTOVERS, k8s.ns)
    except client.ApiException as error:
        if error.status == 404:
            return {}
        raise
    return {key: json.loads(value) for key, value in (found.data or {}).items()}


def delete_while_the_registry_is_down(k8s: Cluster, private_mlflow: Any, name: str) -> str:
    """Serve a version, stop the registry, delete: the ModelDeployment goes, leaving its
    tag recorded. Returns the model's name."""
    model = private_mlflow.register()
    k8s.create(
        name,
        {
            "model": {"name": model, "alias": "champion"},
            "registry": {"trackingUri": private_mlflow.url},
        },
    )
    wait_for("status.model", lambda: k8s.md(name).get("status", {}).get("model"))
    key = deployed_tag_key(k8s.ns, name)
    assert key in MlflowClient(private_mlflow.url).get_model_version(model, "1").tags
    private_mlflow.stop()
    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL, name)

    def names() -> list[str]:
        listed = k8s.custom.list_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL)
        return [md["metadata"]["name"] for md in listed["items"]]

    wait_for("the ModelDeployment to go", lambda: name not in names(), timeout=120)
    warnings = [e for e in k8s.events(name) if e.startswith("RegistryTagLeft:")]
    assert warnings, k8s.events(name)
    assert f"recorded in ConfigMap {k8s.ns}/{LEFTOVERS}" in warnings[0]
    return model


def test_a_tag_the_deletion_left_is_swept_once_the_registry_is_back(
    k8s: Cluster, kubelet: Any, sweeping_operator: Any, private_mlflow: Any
) -> None:
    model = delete_while_the_registry_is_down(k8s, private_mlflow, "left")
    key = deployed_tag_key(k8s.ns, "left")
    [record] = leftovers(k8s)[f"{k8s.ns}.left"]
    assert record["tracking_uri"] == private_mlflow.url
    assert record["tags"] == [{"model": model, "version": 1, "key": key}]
    assert record["namespace"] == k8s.ns and record["name"] == "left" and record["uid"]
    # Sweeps meanwhile fail and keep it.
    time.sleep(4)
    assert f"{k8s.ns}.left" in leftovers(k8s)

    private_mlflow.start()
    mlflow = MlflowClient(private_mlflow.url)
    wait_for(
        "the sweep to remove the tag",
        lambda: key not in mlflow.get_model_version(model, "1").tags,
        timeout=60,
    )
    wait_for("the record to go", lambda: f"{k8s.ns}.left" not in leftovers(k8s), timeout=30)


def test_a_recreated_deployment_keeps_the_tag_and_the_record_goes(
    k8s: Cluster, kubelet: Any, sweeping_operator: Any, private_mlflow: Any
) -> None:
    model = delete_while_the_registry_is_down(k8s, private_mlflow, "again")
    key = deployed_tag_key(k8s.ns, "again")
    assert f"{k8s.ns}.again" in leftovers(k8s)
    # A new one of the same name (on a registry it may not use, so that it never writes
    # to this one itself): the tag is its now, and the record is dropped.
    k8s.create(
        "again",
        {"model": {"name": model, "version": 1}, "registry": {"trackingUri": "http://10.0.0.1"}},
    )
    wait_for("the record to go", lambda: f"{k8s.ns}.again" not in leftovers(k8s), timeout=30)
    wait_for(
        "the new one to be refused its registry",
        lambda: condition(k8s.md("again"), "ModelResolved").get("reason") == "RegistryNotAllowed",
    )

    private_mlflow.start()
    time.sleep(4)  # sweeps pass
    assert key in MlflowClient(private_mlflow.url).get_model_version(model, "1").tags
