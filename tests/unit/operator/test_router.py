"""The router's nginx configuration and child objects, without a cluster (the nginx in
front of real servers is in tests/integration/serving/test_router.py)."""

from __future__ import annotations

import re

import pytest

from modelyard.core import contracts as c
from modelyard.operator.router import (
    CONFIG_DIR,
    CONFIG_KEY,
    Backend,
    RouterPlan,
    build_router,
    build_router_config_map,
    build_router_deployment,
    build_router_pdb,
    render_nginx_conf,
    router_selector,
)


def plan(**kw: object) -> RouterPlan:
    args: dict[str, object] = {
        "name": "churn",
        "namespace": "ml",
        "stable": Backend("churn-stable"),
        "candidate": Backend("churn-candidate"),
        "candidate_weight": 10,
        "image": "modelyard/router:1",
    }
    args.update(kw)
    return RouterPlan(**args)  # type: ignore[arg-type]


def block(conf: str, head: str) -> str:
    """The text of the block that starts with ``head {`` (no nested blocks inside)."""
    start = conf.index(head + " {")
    return conf[start : conf.index("}", start + len(head)) + 1]


def test_the_candidate_share_is_split_per_request_not_per_connection() -> None:
    conf = render_nginx_conf(plan(candidate_weight=10))
    split = block(conf, "split_clients $request_id $modelyard_variant")
    assert re.search(r"10% candidate;\s+\* stable;", split)
    assert "proxy_pass http://$modelyard_variant;" in conf
    assert "server churn-stable.ml.svc.cluster.local:80;" in block(conf, "upstream stable")
    assert "server churn-candidate.ml.svc.cluster.local:80;" in block(conf, "upstream candidate")


@pytest.mark.parametrize(("weight", "only"), [(0, "stable"), (100, "candidate")])
def test_a_weight_of_0_or_100_sends_everything_to_one_variant(weight: int, only: str) -> None:
    conf = render_nginx_conf(plan(candidate_weight=weight))
    assert "split_clients $request_id $modelyard_variant" not in conf
    assert f'map "" $modelyard_variant {{ default {only}; }}' in conf
    # No upstream for a candidate that receives nothing (its Service may be gone).
    assert ("upstream candidate" in conf) is (weight == 100)


def test_every_variant_gets_the_request_id_and_keepalive_connections() -> None:
    conf = render_nginx_conf(plan(shadow=Backend("churn-shadow"), shadow_percent=20))
    # The client's own id wins, else nginx's per-request one.
    assert (
        'map $http_x_request_id $modelyard_request_id { "" $request_id; default'
        " $http_x_request_id; }" in conf
    )
    assert conf.count("proxy_set_header X-Request-ID $modelyard_request_id;") == 3
    for name in ("stable", "candidate", "shadow"):
        assert "keepalive 64;" in block(conf, f"upstream {name}")
    assert conf.count('proxy_set_header Connection "";') == 2


def test_the_shadow_is_mirrored_through_a_loopback_hop_that_answers_at_once() -> None:
    conf = render_nginx_conf(plan(shadow=Backend("churn-shadow", 8000), shadow_percent=20))
    assert "server churn-shadow.ml.svc.cluster.local:8000;" in conf
    assert re.search(
        r"20% 1;\s+\* \"\";", block(conf, 'split_clients "${request_id}shadow" $modelyard_mirror')
    )
    main = block(conf, "location /")
    assert "mirror /_modelyard_mirror;" in main
    first_hop = conf[conf.index("location = /_modelyard_mirror") :]
    assert 'if ($modelyard_mirror = "") { return 204; }' in first_hop
    assert "proxy_pass http://127.0.0.1:8079$request_uri;" in first_hop
    hop_server = conf[conf.index("listen 127.0.0.1:8079;") :]
    assert "mirror /_modelyard_shadow;" in hop_server
    assert "stub_status;" in hop_server
    assert "proxy_pass http://shadow$request_uri;" in hop_server
    assert "proxy_ignore_client_abort on;" in hop_server


def test_without_a_shadow_nothing_is_mirrored() -> None:
    for conf in (
        render_nginx_conf(plan()),
        render_nginx_conf(plan(shadow=Backend("churn-shadow"), shadow_percent=0)),
    ):
        assert "mirror" not in conf
        assert "upstream shadow" not in conf


def test_a_shadow_of_100_percent_mirrors_every_request() -> None:
    conf = render_nginx_conf(plan(shadow=Backend("churn-shadow"), shadow_percent=100))
    assert 'map "" $modelyard_mirror { default 1; }' in conf
    assert 'split_clients "${request_id}shadow"' not in conf


def test_nginx_runs_unprivileged_on_a_read_only_root() -> None:
    conf = render_nginx_conf(plan())
    assert "listen 8080 default_server;" in conf
    assert "pid /tmp/nginx.pid;" in conf
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert re.search(rf"{kind}_temp_path /tmp/", conf), kind
    assert "daemon off;" in conf
    assert 'location = /healthz {\n      default_type text/plain;\n      return 200 "ok\\n";' in (
        conf
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"candidate_weight": 101}, "candidate_weight must be within 0-100"),
        ({"candidate_weight": -1}, "candidate_weight must be within 0-100"),
        ({"shadow_percent": 20}, "needs a shadow Service"),
        ({"candidate": None, "candidate_weight": 5}, "needs a candidate Service"),
        ({"replicas": 0}, "replicas must be at least 1"),
    ],
)
def test_an_impossible_plan_is_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(**kw)


def test_the_deployment_rolls_when_the_configuration_changes() -> None:
    ten = build_router_deployment(plan(candidate_weight=10))
    fifty = build_router_deployment(plan(candidate_weight=50))
    again = build_router_deployment(plan(candidate_weight=10))

    def digest(dep: dict[str, object]) -> str:
        return dep["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_CONFIG_HASH]  # type: ignore[index]

    assert digest(ten) != digest(fifty)
    assert digest(ten) == digest(again)
    spec = ten["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_the_deployment_is_restricted_and_serves_on_the_servers_port_name() -> None:
    dep = build_router_deployment(plan())
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == c.RUN_AS_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["command"] == ["nginx", "-c", f"{CONFIG_DIR}/{CONFIG_KEY}"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp"
    assert mounts[CONFIG_DIR]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"] == {"name": "churn-router"}


def test_children_share_names_labels_and_selector() -> None:
    p = plan()
    config_map, deployment, pdb = build_router(p)
    assert config_map == build_router_config_map(p)
    assert pdb == build_router_pdb(p)
    assert config_map["data"][CONFIG_KEY] == render_nginx_conf(p)
    for obj in (config_map, deployment, pdb):
        assert obj["metadata"]["name"] == "churn-router"
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["labels"][c.LABEL_COMPONENT] == "router"
        assert obj["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.MANAGED_BY
        # The owner reference is Kube.apply_owned's, as for every child.
        assert "ownerReferences" not in obj["metadata"]
    selector = router_selector("churn")
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
