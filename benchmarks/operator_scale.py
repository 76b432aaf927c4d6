"""Operator scale benchmark: N ModelDeployments (default 1,000 across 10 namespaces)
following aliases of 100 registered models in a real `mlflow server`, reconciled by the
modelyard operator (a process, as `modelyard operator` runs in its pod) against a real
API server; beside it, the floor: a minimal kopf operator (benchmarks/kopf_floor.py)
that only watches the same resources.

Each run, on fresh namespaces:
  1. the operator starts; N ModelDeployments are created (8 client threads);
     "to status" is the time from the first create until every one has its server
     Deployment and Service and a status for its generation with ModelResolved=True;
  2. settled (the Deployment controller has seen every Deployment and the operator made
     no write for 20 s: "until the operator's last write"), RSS of the operator at N,
     then a soak (--soak-seconds; nothing changes): its RSS
     every 5 s (growth = last - first sample), and the registry and API requests per
     minute (the mlflow server's access log; the API server's apiserver_request_total,
     without the benchmark's own scrapes);
  3. one alias (used by N/100 deployments, one in each namespace) moves to version 2:
     the time until all of their server Deployments serve it, found by polling
     (MODELYARD_RESOLVE_INTERVAL, 30 s); then MLflow's webhook to the operator is
     registered (`modelyard registry webhook create`) and another alias moves: the same
     time, with the delivery (polling still runs as the fallback, at the same interval);
  4. the operator stops; the kopf floor starts on the same objects: its RSS and its
     API requests per minute over --idle-seconds;
  5. nothing runs: the control plane's own requests over --idle-seconds (the baseline
     subtracted from both operators' API rates);
  6. the namespaces are deleted (finalizers removed by the benchmark: the operator's
     deletion path is not measured here).

The cluster is yours: KUBECONFIG (or --kubeconfig) of a running API server whose service
range holds N Services (hack/cluster.sh with SERVICE_CIDR=10.x.0.0/16; the default /24
does not). The server Deployments run no pods (--replicas 0 by default): this measures
the control loop, not the model servers. Take the benchmark lock:

    export KUBECONFIG=...   # e.g. /tmp/cluster-c5/kubeconfig
    flock /tmp/modelyard-bench.lock .venv/bin/python benchmarks/operator_scale.py \\
        --runs 3 --resources 1000 --namespaces 10 --soak-seconds 120 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.servers import (  # noqa: E402  (after the path)
    VENV_BIN,
    Cluster,
    free_port,
    start_mlflow_server,
    stop_process,
    subprocess_env,
    wait_http,
)

GROUP, VERSION, PLURAL = "modelyard.io", "v1alpha1", "modeldeployments"
MODELS = 100
ALIAS = "champion"
FLOOR = REPO / "benchmarks" / "kopf_floor.py"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"}
#: uvicorn's access log line: method and path of one request to the mlflow server.
ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/\S*) HTTP')


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ cluster
class Kube:
    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config

        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.api.configuration.connection_pool_maxsize = 16
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.networking = client.NetworkingV1Api(self.api)

    def service_range(self) -> int:
        """Addresses in the cluster's Service CIDRs (ServiceCIDR objects, 1.33+)."""
        import ipaddress

        cidrs = self.networking.list_service_cidr().items
        return sum(ipaddress.ip_network(c).num_addresses for s in cidrs for c in s.spec.cidrs)

    def requests(self) -> dict[str, float]:
        """apiserver_request_total by verb, for resources (not /metrics, /readyz...)."""
        from prometheus_client.parser import text_string_to_metric_families

        configuration = self.api.configuration
        headers = {}
        token = configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        response = self.api.call_api("GET", f"{configuration.host}/metrics", headers)
        text = response.read().decode()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "apiserver_request_total" and s.labels.get("resource"):
                    verb = s.labels["verb"]
                    totals[verb] = totals.get(verb, 0.0) + s.value
        return totals


def per_minute(before: dict[str, float], after: dict[str, float], seconds: float) -> Rates:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    writes = sum(v for k, v in delta.items() if k in WRITE_VERBS)
    reads = sum(v for k, v in delta.items() if k not in WRITE_VERBS)
    return Rates(reads * 60 / seconds, writes * 60 / seconds, delta)


@dataclass
class Rates:
    reads: float
    writes: float
    by_verb: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------ registry
@dataclass
class Registry:
    url: str
    proc: Any
    log: Path

    def requests(self) -> tuple[int, int]:
        """(reads, writes) the server logged so far; searches are POSTs that only read."""
        reads = writes = 0
        for method, path in ACCESS.findall(self.log.read_text(errors="replace")):
            if method == "GET" or path.endswith("/search") or "/search?" in path:
                reads += 1
            else:
                writes += 1
        return reads, writes


#: The registry delivers webhooks to the operator on this host: http:// and a private
#: address allowed, its webhook list re-read every second (MLflow caches it for 60 s).
WEBHOOK_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}
#: The secret shared by the registry's webhook and the operator's receiver.
WEBHOOK_SECRET = "bench-" + os.urandom(12).hex()


@contextmanager
def mlflow_registry(root: Path) -> Iterator[Registry]:
    from cryptography.fernet import Fernet

    port = free_port()
    env = {**WEBHOOK_ENV, "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    proc, log_path = start_mlflow_server(root, port, env=env)
    registry = Registry(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_http(f"{registry.url}/health", 300, proc, log_path)
        yield registry
    finally:
        stop_process(proc)


def register_models(url: str) -> list[str]:
    """MODELS registered models, each with versions 1 and 2 of one small logged model
    (the operator reads the registry, not the weights) and the alias on version 1."""
    import logging

    from mlflow import MlflowClient

    from tests.support.models import register_sklearn_model

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    base = register_sklearn_model(url, name="bench-base", alias=None)
    client = MlflowClient(url)
    source = client.get_model_version(base.name, base.version).source  # models:/<model id>
    model_id = source.removeprefix("models:/")
    names = [f"bench-{k:03d}" for k in range(MODELS)]

    def one(name: str) -> None:
        client.create_registered_model(name)
        for _ in (1, 2):
            client.create_model_version(name, source, run_id=base.run_id, model_id=model_id)
        client.set_registered_model_alias(name, ALIAS, "1")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, names))
    return names


# ------------------------------------------------------------------------------ processes
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    health: str
    metrics: str = ""
    webhook: str = ""

    def samples(self, name: str) -> list[Any]:
        """The samples of one metric on the operator's /metrics."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.metrics, timeout=10).text
        return [
            s
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on the operator's /metrics."""
        return sum(s.value for s in self.samples(name))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """A metric's samples on the operator's /metrics, by one label's value."""
        return {s.labels.get(label, ""): s.value for s in self.samples(name)}

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{self.name} has no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(name: str, argv: list[str], workdir: Path, port: int, env: dict[str, str]) -> Proc:
    log_path = workdir / f"{name}.log"
    popen = subprocess.Popen(
        argv,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        env=subprocess_env(**env),
        start_new_session=True,
    )
    proc = Proc(name, popen, log_path, f"http://127.0.0.1:{port}/healthz")
    wait_http(proc.health, 120, popen, log_path)
    return proc


def start_operator(workdir: Path, kubeconfig: str, workers: int | None) -> Proc:
    from modelyard.core.contracts import RegistryWebhook

    port, metrics_port, hook_port = free_port(), free_port(), free_port()
    env = {
        "KUBECONFIG": kubeconfig,
        "MODELYARD_ALLOWED_REGISTRIES": "http://127.0.0.1:*",
        "MODELYARD_SERVER_IMAGE": "modelyard/server:bench",
        "MODELYARD_METRICS_PORT": str(metrics_port),
        "MODELYARD_WEBHOOK_PORT": str(hook_port),
        RegistryWebhook.SECRET_ENV: WEBHOOK_SECRET,
    }
    if workers is not None:
        env["MODELYARD_RECONCILE_WORKERS"] = str(workers)
    argv = [
        str(VENV_BIN / "modelyard"),
        "operator",
        "--liveness",
        f"http://127.0.0.1:{port}/healthz",
    ]
    proc = start("operator", argv, workdir, port, env)
    proc.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    proc.webhook = f"http://127.0.0.1:{hook_port}{RegistryWebhook.PATH}"
    return proc


def register_webhook(registry: str, receiver: str) -> None:
    """As a user does: `modelyard registry webhook create` (creates, or updates the
    URL of, the registry's webhook to the operator)."""
    subprocess.run(
        [
            str(VENV_BIN / "modelyard"), "registry", "webhook", "create",
            "--url", receiver, "--secret-env", "BENCH_WEBHOOK_SECRET",
            "--tracking-uri", registry,
        ],
        env=subprocess_env(BENCH_WEBHOOK_SECRET=WEBHOOK_SECRET),
        check=True,
        capture_output=True,
    )  # fmt: skip


def start_floor(workdir: Path, kubeconfig: str) -> Proc:
    port = free_port()
    argv = [sys.executable, str(FLOOR), f"http://127.0.0.1:{port}/healthz"]
    return start("kopf-floor", argv, workdir, port, {"KUBECONFIG": kubeconfig})


# ------------------------------------------------------------------------------ one run
def md_body(name: str, model: str, registry: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model, "alias": ALIAS},
            "registry": {"trackingUri": registry},
            "server": {"replicas": replicas},
        },
    }


def done_count(kube: Kube, namespaces: list[str]) -> int:
    """ModelDeployments with their Deployment, Service and a status for their
    generation with ModelResolved=True."""
    done = 0
    for ns in namespaces:
        mds = kube.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        deployments = {d.metadata.name for d in kube.apps.list_namespaced_deployment(ns).items}
        services = {s.metadata.name for s in kube.core.list_namespaced_service(ns).items}
        for md in mds:
            name = md["metadata"]["name"]
            status = md.get("status") or {}
            resolved = any(
                c["type"] == "ModelResolved" and c["status"] == "True"
                for c in status.get("conditions") or []
            )
            if (
                resolved
                and status.get("observedGeneration") == md["metadata"]["generation"]
                and name in deployments
                and name in services
            ):
                done += 1
    return done


def observed_all(kube: Kube, namespaces: list[str]) -> bool:
    """Every server Deployment's spec seen by the Deployment controller."""
    return all(
        (d.status.observed_generation or 0) >= d.metadata.generation
        for ns in namespaces
        for d in kube.apps.list_namespaced_deployment(ns).items
    )


def wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 1.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - started


def serves_version(kube: Kube, ns: str, name: str, model: str, version: int) -> bool:
    d = kube.apps.read_namespaced_deployment(name, ns)
    env = {e.name: e.value for e in d.spec.template.spec.containers[0].env or []}
    return env.get("MODELYARD_MODEL_URI") == f"models:/{model}/{version}"


def one_run(
    run: int,
    args: argparse.Namespace,
    kube: Kube,
    registry: Registry,
    models: list[str],
    workdir: Path,
) -> dict[str, Any]:
    from mlflow import MlflowClient

    n, k = args.resources, args.namespaces
    tag = f"{os.getpid() % 10000}-{run}"
    namespaces = [f"bench-scale-{tag}-{i}" for i in range(k)]
    for ns in namespaces:
        kube.core.create_namespace({"metadata": {"name": ns}})
    # MD i follows model i // (n / MODELS): each model's deployments spread over namespaces.
    per_model = max(1, n // MODELS)
    placed = [
        (namespaces[i % k], f"md-{i:05d}", models[(i // per_model) % MODELS]) for i in range(n)
    ]
    result: dict[str, Any] = {"run": run, "resources": n, "namespaces": k}

    operator = start_operator(workdir, args.kubeconfig, args.workers)
    try:
        time.sleep(2)  # its watches are listed
        started = time.monotonic()

        def create(item: tuple[str, str, str]) -> None:
            ns, name, model = item
            kube.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, md_body(name, model, registry.url, args.replicas)
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, placed))
        result["create_s"] = time.monotonic() - started
        log(f"run {run}: {n} created in {result['create_s']:.1f}s")
        progress = {"done": 0}

        def all_done() -> bool:
            progress["done"] = done_count(kube, namespaces)
            return progress["done"] >= n

        try:
            wait("every ModelDeployment to have children and status", all_done, args.timeout)
            result["to_status_s"] = time.monotonic() - started
        except TimeoutError:
            result["to_status_s"] = None
            result["done_at_timeout"] = progress["done"]
        log(f"run {run}: to status {result['to_status_s']} ({progress['done']}/{n})")
        # Settled: the controller-manager has caught up with every Deployment (its own
        # client is rate-limited) and the operator has made no write for 20 s.
        writes = {"last": -1.0, "since": time.monotonic()}

        def quiet() -> bool:
            now = operator.metric("modelyard_operator_api_writes_total")
            if now != writes["last"]:
                writes["last"], writes["since"] = now, time.monotonic()
            return time.monotonic() - writes["since"] >= 20 and observed_all(kube, namespaces)

        try:
            wait("the operator to stop writing", quiet, args.timeout, interval=2)
            result["to_quiet_s"] = time.monotonic() - started - 20
        except TimeoutError:
            result["to_quiet_s"] = None
        result["writes_to_quiet"] = writes["last"]
        result["writes_by_verb"] = operator.by_label("modelyard_operator_api_writes_total", "verb")
        result["reconciles_to_quiet"] = operator.metric("modelyard_operator_reconciles_total")
        log(f"run {run}: quiet at {result['to_quiet_s']}s after {writes['last']:.0f} writes")
        result["operator_rss_mib"] = operator.rss_mib()

        # Soak: nothing changes; RSS samples and the requests of both sides.
        api_before, reg_before, cpu_before = (
            kube.requests(),
            registry.requests(),
            operator.cpu_seconds(),
        )
        soak_start = time.monotonic()
        samples = []
        while time.monotonic() - soak_start < args.soak_seconds:
            samples.append(operator.rss_mib())
            time.sleep(min(5.0, max(0.0, args.soak_seconds - (time.monotonic() - soak_start))))
        samples.append(operator.rss_mib())
        seconds = time.monotonic() - soak_start
        api = per_minute(api_before, kube.requests(), seconds)
        reg_after = registry.requests()
        result["soak_s"] = seconds
        result["rss_samples_mib"] = [round(s, 1) for s in samples]
        result["rss_growth_mib"] = samples[-1] - samples[0]
        result["operator_cpu_per_min_s"] = (operator.cpu_seconds() - cpu_before) * 60 / seconds
        result["registry_reads_per_min"] = (reg_after[0] - reg_before[0]) * 60 / seconds
        result["registry_writes_per_min"] = (reg_after[1] - reg_before[1]) * 60 / seconds
        result["operator_api"] = api.__dict__
        log(f"run {run}: soak {seconds:.0f}s, RSS {samples[0]:.0f} -> {samples[-1]:.0f} MiB")

        # One alias moves: its deployments (one per namespace) roll, found by polling;
        # then, with the registry's webhook to the operator, another one.
        mlflow = MlflowClient(registry.url)

        def alias_move(moved: str) -> float | None:
            followers = [(ns, name) for ns, name, model in placed if model == moved]
            result["alias_followers"] = len(followers)
            mlflow.set_registered_model_alias(moved, ALIAS, "2")
            pending = set(followers)

            def rolled() -> bool:
                for ns, name in list(pending):
                    if serves_version(kube, ns, name, moved, 2):
                        pending.discard((ns, name))
                return not pending

            try:
                return wait(f"the move of {moved}@{ALIAS}", rolled, 300, interval=0.25)
            except TimeoutError:
                return None

        result["alias_move_poll_s"] = alias_move(models[(2 * run) % MODELS])
        log(f"run {run}: alias move rolled in {result['alias_move_poll_s']}s (polling)")
        register_webhook(registry.url, operator.webhook)
        time.sleep(3)  # MLflow re-reads its webhook list every second (WEBHOOK_ENV)
        accepted = operator.metric("modelyard_operator_webhook_deliveries_total")
        result["alias_move_webhook_s"] = alias_move(models[(2 * run + 1) % MODELS])
        result["webhook_deliveries"] = (
            operator.metric("modelyard_operator_webhook_deliveries_total") - accepted
        )
        log(
            f"run {run}: alias move rolled in {result['alias_move_webhook_s']}s (webhook, "
            f"{result['webhook_deliveries']:.0f} deliveries)"
        )
        for hook in mlflow.list_webhooks():  # the next run's operator listens elsewhere
            mlflow.delete_webhook(hook.webhook_id)
    finally:
        operator.stop()

    # The floor on the same objects.
    floor = start_floor(workdir, args.kubeconfig)
    try:
        time.sleep(20)  # listed and settled
        result["floor_rss_mib"] = floor.rss_mib()
        before, t0 = kube.requests(), time.monotonic()
        time.sleep(args.idle_seconds)
        result["floor_api"] = per_minute(before, kube.requests(), time.monotonic() - t0).__dict__
    finally:
        floor.stop()

    # The control plane alone.
    before, t0 = kube.requests(), time.monotonic()
    time.sleep(args.idle_seconds)
    result["baseline_api"] = per_minute(before, kube.requests(), time.monotonic() - t0).__dict__

    # Clean up (not measured; the operator's deletion path is not what this measures,
    # and with it 1,000 deletions took about 15 minutes): finalizers off, namespaces gone.
    def release(item: tuple[str, str, str]) -> None:
        ns, name, _ = item
        kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": None}}
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(release, placed))
    for ns in namespaces:
        kube.core.delete_namespace(ns)

    def gone() -> bool:
        existing = {n.metadata.name for n in kube.core.list_namespace().items}
        return not existing & set(namespaces)

    wait("the namespaces to be deleted", gone, 900, interval=3)
    return result


# ------------------------------------------------------------------------------ report
def med(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [v for v in map(key, runs) if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(ours: float | None, floor: float | None) -> str:
    if ours is None or floor is None or floor < 1:  # no ratio to (almost) nothing
        return "n/a"
    return f"{ours / floor:.1f}x"


def table(runs: list[dict[str, Any]]) -> str:
    def api(side: str, kind: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: max(0.0, r[side][kind] - r["baseline_api"][kind])

    rows = [
        ("time to children + status, all (s)", med(runs, lambda r: r["to_status_s"]), None, "< 60"),
        (
            "  until the operator's last write (s)",
            med(runs, lambda r: r.get("to_quiet_s")),
            None,
            "",
        ),
        ("  creating them (s, client side)", med(runs, lambda r: r["create_s"]), None, ""),
        (
            "RSS at N (MiB)",
            med(runs, lambda r: r["operator_rss_mib"]),
            med(runs, lambda r: r["floor_rss_mib"]),
            "< 200",
        ),
        ("RSS growth over the soak (MiB)", med(runs, lambda r: r["rss_growth_mib"]), None, "flat"),
        ("CPU while idle (s per min)", med(runs, lambda r: r["operator_cpu_per_min_s"]), None, ""),
        (
            "registry reads / min, idle",
            med(runs, lambda r: r["registry_reads_per_min"]),
            0.0,
            "~ distinct refs / interval",
        ),
        (
            "registry writes / min, idle",
            med(runs, lambda r: r["registry_writes_per_min"]),
            0.0,
            "~0",
        ),
        (
            "API reads / min, idle (minus baseline)",
            med(runs, api("operator_api", "reads")),
            med(runs, api("floor_api", "reads")),
            "",
        ),
        (
            "API writes / min, idle (minus baseline)",
            med(runs, api("operator_api", "writes")),
            med(runs, api("floor_api", "writes")),
            "~0",
        ),
        (
            "alias move to all followers rolled, polling (s)",
            med(runs, lambda r: r["alias_move_poll_s"]),
            None,
            "",
        ),
        (
            "alias move to all followers rolled, webhook (s)",
            med(runs, lambda r: r.get("alias_move_webhook_s")),
            None,
            "< 5",
        ),
    ]
    out = [
        "| measure (median of runs) | modelyard operator | kopf floor | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for label, ours, floor, target in rows:
        out.append(f"| {label} | {fmt(ours)} | {fmt(floor)} | {ratio(ours, floor)} | {target} |")
    base = (
        med(runs, lambda r: r["baseline_api"]["reads"]),
        med(runs, lambda r: r["baseline_api"]["writes"]),
    )
    out.append("")
    out.append(
        f"Control plane alone (baseline subtracted above): {fmt(base[0])} reads, "
        f"{fmt(base[1])} writes per minute. Runs: {len(runs)}."
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="Measured runs (fresh namespaces each); medians are reported.",
    )
    parser.add_argument("--resources", type=int, default=1000, help="ModelDeployments per run (N).")
    parser.add_argument(
        "--namespaces", type=int, default=10, help="Namespaces they are spread over."
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=120,
        help="Idle soak after all are reconciled: RSS growth and requests per minute "
        "(the issue's target is read over 1800 s, by hand).",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=60,
        help="Idle window of the kopf floor and of the baseline.",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="spec.server.replicas of each (0: no pods; 1 needs a node).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="MODELYARD_RECONCILE_WORKERS of the operator (default: the operator's own, 8).",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="Give up waiting for all to have a status after this long.",
    )
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="The cluster (default $KUBECONFIG).",
    )
    parser.add_argument("--output", type=Path, help="Write every run's numbers as JSON here.")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="Print the table as Markdown (the default; kept for the docs' command).",
    )
    args = parser.parse_args()
    if not args.kubeconfig:
        parser.error("no cluster: set KUBECONFIG or --kubeconfig (hack/cluster.sh up; see --help)")
    if args.resources < MODELS:
        parser.error(f"--resources must be at least {MODELS} (one per registered model)")

    kube = Kube(args.kubeconfig)
    # The chart's CRDs, as `helm install` puts them in (created or updated).
    cache = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))
    Cluster(Path(args.kubeconfig), cache / "bin").run_kubectl(
        "apply", "--server-side", "--force-conflicts",
        "-f", str(REPO / "charts" / "modelyard" / "crds"),
    )  # fmt: skip
    size = kube.service_range()
    if size < args.resources + 50:
        parser.error(
            f"the cluster's service range has {size} addresses, too few for "
            f"{args.resources} Services: start it with SERVICE_CIDR=10.x.0.0/16"
        )
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        workdir = Path(tmp)
        with mlflow_registry(workdir / "mlflow") as registry:
            started = time.monotonic()
            models = register_models(registry.url)
            log(f"{MODELS} models registered in {time.monotonic() - started:.0f}s")
            runs = []
            for run in range(args.runs):
                runs.append(one_run(run, args, kube, registry, models, workdir))
                shown = {k: v for k, v in runs[-1].items() if k != "rss_samples_mib"}
                log(f"run {run}: {json.dumps(shown)}")
        if args.output:
            args.output.write_text(json.dumps(runs, indent=2))
    print(
        f"\n{args.resources} ModelDeployments in {args.namespaces} namespaces, {MODELS} models, "
        f"soak {args.soak_seconds:.0f}s, reconcile workers {args.workers or 'default'}, "
        f"on {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n"
    )
    print(table(runs))


if __name__ == "__main__":
    main()
