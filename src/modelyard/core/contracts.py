"""The names the components of modelyard rely on, in one place.

Each name here is read by one component and written by another (the operator sets an
environment variable the server reads; the drift check writes a tag the operator reads).
Change a name here and every side changes with it; ``docs/contracts.md`` explains them.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Any, Final

from modelyard._version import __version__

# ------------------------------------------------------------------ images
#: One image per component, each with only its own dependencies (docs/contracts.md).
OPERATOR_IMAGE: Final = f"modelyard/operator:{__version__}"
SERVER_IMAGE: Final = f"modelyard/server:{__version__}"
#: Pipelines, drift checks and the MLflow tracking server.
TOOLKIT_IMAGE: Final = f"modelyard/toolkit:{__version__}"
#: nginx, in front of a ModelDeployment's variants during a canary or a shadow.
ROUTER_IMAGE: Final = f"modelyard/router:{__version__}"

# ------------------------------------------------------------------ the model server
#: The port the model server listens on, inside its pod.
SERVER_PORT: Final = 3000
#: The port of the ModelDeployment's Service.
SERVICE_PORT: Final = 80
#: Answers 200 while the process is healthy.
LIVENESS_PATH: Final = "/livez"
#: Answers 200 only once the model is loaded and warmed up.
READINESS_PATH: Final = "/readyz"
#: Prometheus metrics of every modelyard process that serves HTTP.
METRICS_PATH: Final = "/metrics"
#: The port the router (nginx) listens on, inside its pod, and its probes' path.
ROUTER_PORT: Final = 8080
ROUTER_HEALTH_PATH: Final = "/healthz"
#: The model server's Prometheus metrics the canary analysis reads (docs/contracts.md): a
#: counter of answered requests labelled with their HTTP ``status``, and a histogram of
#: their latency, both also labelled ``endpoint``, ``model_name`` and ``model_version``.
REQUESTS_METRIC: Final = "modelyard_requests_total"
REQUEST_DURATION_METRIC: Final = "modelyard_request_duration_seconds"
#: The uid (and gid) every modelyard container runs as; the images name it ``modelyard``.
RUN_AS_UID: Final = 10001


class Protocol:
    """The prediction protocols the model server speaks (``status.endpoints[].protocol``)."""

    #: BentoML's API (``bentoml.SyncHTTPClient``); the body is a JSON array of records.
    BENTOML: Final = "bentoml"
    #: MLflow's scoring protocol, as ``mlflow models serve`` speaks it.
    MLFLOW: Final = "mlflow"
    #: The Open Inference Protocol (KServe, Triton, MLServer), REST.
    V2: Final = "v2"


#: BentoML's API: records in, predictions out (also the OpenAPI page's example).
PREDICT_PATH: Final = "/predict"
#: MLflow's scoring protocol.
INVOCATIONS_PATH: Final = "/invocations"
#: The Open Inference Protocol: server health and metadata under this prefix.
V2_PREFIX: Final = "/v2"
#: The OpenAPI document of the server; its page (Swagger UI) is at ``/``.
OPENAPI_PATH: Final = "/docs.json"


def v2_model_path(model_name: str) -> str:
    """``/v2/models/{name}``: the model's metadata; ``/ready`` and ``/infer`` below it."""
    from urllib.parse import quote

    return f"{V2_PREFIX}/models/{quote(model_name, safe='')}"


def server_endpoints(model_name: str) -> list[dict[str, str]]:
    """Where the server serving ``model_name`` answers each protocol: the operator writes
    this as ``status.endpoints``; the server's routes are the same paths."""
    return [
        {"protocol": Protocol.BENTOML, "path": PREDICT_PATH},
        {"protocol": Protocol.MLFLOW, "path": INVOCATIONS_PATH},
        {"protocol": Protocol.V2, "path": f"{v2_model_path(model_name)}/infer"},
    ]


class ServerEnv:
    """Environment variables of the model server (set by the operator or ``modelyard serve``)."""

    MODEL_URI: Final = "MODELYARD_MODEL_URI"
    MODEL_NAME: Final = "MODELYARD_MODEL_NAME"
    MODEL_VERSION: Final = "MODELYARD_MODEL_VERSION"
    PREDICTION_LOG: Final = "MODELYARD_PREDICTION_LOG"
    #: fsspec URL of the model cache (docs/serving.md, "Model cache"); unset: no cache.
    MODEL_CACHE: Final = "MODELYARD_MODEL_CACHE"
    LOG_FLUSH_INTERVAL: Final = "MODELYARD_LOG_FLUSH_INTERVAL"
    LOG_FLUSH_ROWS: Final = "MODELYARD_LOG_FLUSH_ROWS"
    LOG_MAX_BUFFERED_BYTES: Final = "MODELYARD_LOG_MAX_BUFFERED_BYTES"
    MAX_BODY_BYTES: Final = "MODELYARD_MAX_BODY_BYTES"
    MAX_BATCH_REQUESTS: Final = "MODELYARD_MAX_BATCH_REQUESTS"
    MAX_LATENCY_MS: Final = "MODELYARD_MAX_LATENCY_MS"
    MAX_CONCURRENT_REQUESTS: Final = "MODELYARD_MAX_CONCURRENT_REQUESTS"
    MAX_INFLIGHT_BYTES: Final = "MODELYARD_MAX_INFLIGHT_BYTES"
    PREDICT_TIMEOUT: Final = "MODELYARD_PREDICT_TIMEOUT"
    #: Seconds a keep-alive connection is used before the server closes it (0: never).
    MAX_CONNECTION_AGE: Final = "MODELYARD_MAX_CONNECTION_AGE"
    WORKERS: Final = "MODELYARD_WORKERS"
    ACCESS_LOG: Final = "MODELYARD_ACCESS_LOG"
    TRACE_REQUESTS: Final = "MODELYARD_TRACE_REQUESTS"
    #: "true": load models whose format runs code (spec.server.allowPickle).
    ALLOW_PICKLE: Final = "MODELYARD_ALLOW_PICKLE"
    #: Where the server writes why it could not start (Kubernetes' terminationMessagePath).
    TERMINATION_LOG: Final = "MODELYARD_TERMINATION_LOG"


#: Where a server pod mounts the model cache's volume claim (it is then the cache URL).
MODEL_CACHE_MOUNT: Final = "/var/cache/modelyard/models"
#: The server's counter of model loads, by where the files came from (registry, cache, uri).
MODEL_LOADS_METRIC: Final = "modelyard_model_loads_total"

#: Seconds a keep-alive connection to a server or a router is used before it is closed,
#: after an answer (``Connection: close`` from the servers, nginx's ``keepalive_time`` in
#: the router): a client pinned to a pod by kube-proxy reconnects, through the Service,
#: at least this often.
DEFAULT_MAX_CONNECTION_AGE: Final = 10.0
#: The preStop pause of the servers' and the router's pods: longer than the connection
#: age, so every connection in use has been closed after an answer, and its client has
#: reconnected elsewhere, before the process stops and closes what is left. A shorter
#: pause closes connections that are in use, and a client sending at that instant gets
#: no answer (a RemoteProtocolError, not a status).
DRAIN_SECONDS: Final = int(DEFAULT_MAX_CONNECTION_AGE) + 5


class PipelineEnv:
    """Environment variables of pipeline runs (set by the CronJob or the CLI)."""

    HOME: Final = "MODELYARD_HOME"
    LAKE: Final = "MODELYARD_LAKE"
    RUN_DATE: Final = "MODELYARD_RUN_DATE"
    CODE_VERSION: Final = "MODELYARD_CODE_VERSION"
    #: Set by Kubernetes in each pod of an Indexed Job, and by the local runner for fan-out.
    COMPLETION_INDEX: Final = "JOB_COMPLETION_INDEX"
    #: The run a step belongs to (the orchestrating Job's name in the cluster), for tags.
    RUN_ID: Final = "MODELYARD_RUN_ID"
    #: ``kubernetes``: run every step as its own Job (the CronJob's pod orchestrates).
    EXECUTOR: Final = "MODELYARD_EXECUTOR"
    #: The orchestrating pod's own name and namespace (from the downward API).
    POD_NAME: Final = "MODELYARD_POD_NAME"
    POD_NAMESPACE: Final = "MODELYARD_POD_NAMESPACE"
    #: Container resources (JSON) of the step pods of a pipeline that declares none.
    STEP_RESOURCES: Final = "MODELYARD_STEP_RESOURCES"
    #: ``true``: step pods run on the orchestrator's node (a ReadWriteOnce lake volume).
    STEPS_ON_NODE: Final = "MODELYARD_STEPS_ON_NODE"
    #: The Optuna study storage of tuning steps (an SQLAlchemy URL, e.g. PostgreSQL).
    STUDY_STORAGE: Final = "MODELYARD_STUDY_STORAGE"


# ------------------------------------------------------------------ the MLflow registry
#: The tracking server, as MLflow itself reads it.
TRACKING_URI_ENV: Final = "MLFLOW_TRACKING_URI"
#: Registry credentials, under the keys MLflow reads: in a Secret
#: (``spec.registry.credentialsSecretRef``) and in the pods' environment.
TRACKING_USERNAME_ENV: Final = "MLFLOW_TRACKING_USERNAME"
TRACKING_PASSWORD_ENV: Final = "MLFLOW_TRACKING_PASSWORD"
TRACKING_TOKEN_ENV: Final = "MLFLOW_TRACKING_TOKEN"
CREDENTIAL_KEYS: Final = (TRACKING_USERNAME_ENV, TRACKING_PASSWORD_ENV, TRACKING_TOKEN_ENV)


class RegistryUsers:
    """The MLflow users of an installation whose registry runs with authentication
    (``mlflow server --app-name basic-auth``), one per component, and where their
    passwords live: one Secret in the release's namespace, generated inside the cluster
    (``modelyard registry credentials``), never rendered into manifests.

    Who may do what (docs/security.md): every user reads (MLflow's default permission);
    the pipelines create the experiments and models they log, so they MANAGE them and
    grant EDIT on each model they register to the operator (approval, deployment and
    rejection tags) and to the drift checks (drift tags); the servers only read.
    """

    ADMIN: Final = "admin"
    OPERATOR: Final = "modelyard-operator"
    PIPELINES: Final = "modelyard-pipelines"
    SERVER: Final = "modelyard-server"
    DRIFT: Final = "modelyard-drift"
    COMPONENTS: Final = (OPERATOR, PIPELINES, SERVER, DRIFT)
    #: Users granted a permission on every model the pipelines register.
    MODEL_EDITORS: Final = (OPERATOR, DRIFT)
    #: Which permission: EDIT sets tags, but MLflow ties deleting a tag to deleting the
    #: model (``can_delete``), so the operator, which removes the deployed, pending and
    #: rejection tags it wrote, needs MANAGE; the drift check only sets tags.
    MODEL_PERMISSIONS: Final = {OPERATOR: "MANAGE", DRIFT: "EDIT"}
    #: Of those, the users granted EDIT on the model's training experiment too: the drift
    #: checks log their runs beside the training run.
    RUN_WRITERS: Final = (DRIFT,)
    #: MLflow refuses shorter passwords.
    MIN_PASSWORD_LENGTH: Final = 12
    #: Key of the Flask session secret in the credentials Secret (shared by every replica).
    FLASK_SECRET_KEY: Final = "flask-secret-key"

    #: Set on pipeline pods: the users granted EDIT on each model the pipeline registers.
    MODEL_EDITORS_ENV: Final = "MODELYARD_REGISTRY_MODEL_EDITORS"

    @staticmethod
    def password_key(user: str) -> str:
        """The credentials Secret's key holding ``user``'s password."""
        return f"{user.removeprefix('modelyard-')}-password"

    @classmethod
    def env(cls, secret: str, user: str) -> list[dict[str, Any]]:
        """A pod's environment logging in to the registry as ``user``, whose password is
        in ``secret`` (the installation's credentials Secret)."""
        return [
            {"name": TRACKING_USERNAME_ENV, "value": user},
            {
                "name": TRACKING_PASSWORD_ENV,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": cls.password_key(user)}},
            },
        ]


#: Secrets the operator writes beside a ModelDeployment with the registry credentials of
#: its servers and of its drift check (when the installation's registry has users).
def server_credentials_secret(deployment: str) -> str:
    return f"{deployment}-registry"


def drift_credentials_secret(deployment: str) -> str:
    return f"{deployment}-drift-registry"


#: On a model version: "deployed here since" (the value), one key per ModelDeployment.
DEPLOYED_TAG_PREFIX: Final = "modelyard.io/deployed"


def deployed_tag_key(namespace: str, name: str) -> str:
    """The registry tag that says version N is live in ModelDeployment namespace/name."""
    return f"{DEPLOYED_TAG_PREFIX}/{namespace}/{name}"


class ApprovalTags:
    """Tags on a model version recording a person's decision about it, per ModelDeployment
    (and the operator's own rejection of a version whose rollout failed)."""

    PREFIX: Final = "modelyard.io/approval"
    #: The state: PENDING, APPROVED or REJECTED.
    PENDING: Final = "PendingApproval"
    APPROVED: Final = "Approved"
    REJECTED: Final = "Rejected"

    @staticmethod
    def key(namespace: str, name: str) -> str:
        return f"{ApprovalTags.PREFIX}/{namespace}/{name}"

    @staticmethod
    def detail(namespace: str, name: str, what: str) -> str:
        """``by``, ``at``, ``comment`` and ``reason`` beside the state."""
        return f"{ApprovalTags.key(namespace, name)}.{what}"


#: On a Namespace: every ModelDeployment in it requires approval, whatever its spec says.
NAMESPACE_APPROVAL_LABEL: Final = "modelyard.io/approval"
NAMESPACE_APPROVAL_REQUIRED: Final = "required"


class DriftTags:
    """Tags the drift check writes on the model version it checked, read by the operator."""

    PREFIX: Final = "modelyard.drift"
    LAST_RUN_ID: Final = f"{PREFIX}.last_run_id"
    LAST_CHECKED: Final = f"{PREFIX}.last_checked"
    LAST_STATUS: Final = f"{PREFIX}.last_status"
    LAST_DATASET_DRIFT: Final = f"{PREFIX}.last_dataset_drift"
    LAST_PREDICTION_DRIFT: Final = f"{PREFIX}.last_prediction_drift"
    LAST_DRIFTED_COLUMNS: Final = f"{PREFIX}.last_drifted_columns"
    LAST_SHARE: Final = f"{PREFIX}.last_share_of_drifted_columns"
    LAST_MESSAGE: Final = f"{PREFIX}.last_message"
    # On the drift check's own run.
    MODEL_NAME: Final = f"{PREFIX}.model_name"
    MODEL_VERSION: Final = f"{PREFIX}.model_version"
    SOURCE_RUN_ID: Final = f"{PREFIX}.source_run_id"
    STATUS: Final = f"{PREFIX}.status"
    DATASET_DRIFT: Final = f"{PREFIX}.dataset_drift"
    PREDICTION_DRIFT: Final = f"{PREFIX}.prediction_drift"
    WINDOW: Final = f"{PREFIX}.window"
    #: MLflow limits tag values; the free-text ones are cut to this length.
    MAX_TEXT: Final = 1000
    #: On the check's run: the ModelDeployment (``namespace/name``) it checked for.
    DEPLOYMENT: Final = f"{PREFIX}.deployment"

    @staticmethod
    def keyed(key: str, deployment: tuple[str, str] | None) -> str:
        """A ``last_*`` tag of one ModelDeployment's checks (``modelyard.drift/<namespace>/
        <name>.last_status``): two deployments serving one version keep their own verdicts.
        Without a deployment (a check run by hand), the plain key."""
        if deployment is None:
            return key
        namespace, name = deployment
        return key.replace(f"{DriftTags.PREFIX}.", f"{DriftTags.PREFIX}/{namespace}/{name}.", 1)


class ShadowTags:
    """What ``modelyard shadow compare`` writes: a JSON summary on the shadow version per
    ModelDeployment (read by the operator into ``status.shadow``), tags on its own run."""

    PREFIX: Final = "modelyard.io/shadow"
    RUN_PREFIX: Final = "modelyard.shadow"
    MODEL_NAME: Final = f"{RUN_PREFIX}.model_name"
    STABLE_VERSION: Final = f"{RUN_PREFIX}.stable_version"
    SHADOW_VERSION: Final = f"{RUN_PREFIX}.shadow_version"
    WINDOW: Final = f"{RUN_PREFIX}.window"
    #: The MLflow metric names (on the comparison's run, linked to the shadow version's
    #: logged model when it has one).
    METRIC_PREFIX: Final = "shadow"

    @staticmethod
    def key(namespace: str, name: str) -> str:
        return f"{ShadowTags.PREFIX}/{namespace}/{name}"


class RunTags:
    """Tags the training pipeline writes on its runs and model versions."""

    CODE_VERSION: Final = "modelyard.code_version"
    PIPELINE: Final = "modelyard.pipeline"
    PIPELINE_RUN: Final = "modelyard.pipeline_run"
    RUN_DATE: Final = "modelyard.run_date"
    RUN_ID: Final = "modelyard.run_id"
    PROMOTION: Final = "modelyard.promotion"
    #: A tuning step's Optuna study, on its parent run and the version it registers.
    STUDY: Final = "modelyard.study"
    #: The trial: its number on its child run; the best trial's on the parent and version.
    TRIAL: Final = "modelyard.trial"
    TRIAL_RUN_ID: Final = "modelyard.trial_run_id"
    #: COMPLETE, PRUNED or FAIL, on a trial's child run.
    TRIAL_STATE: Final = "modelyard.trial_state"


class RegistryWebhook:
    """MLflow Model Registry webhooks (MLflow 3.3+) delivered to the operator
    (docs/operations.md): ``modelyard registry webhook create`` registers them, the
    operator's receiver checks and acts on them. The header names and the signature are
    MLflow's (``mlflow.webhooks``); the operator image has no MLflow, so they are here."""

    #: The receiver's path on the operator's webhook port (MODELYARD_WEBHOOK_PORT).
    PATH: Final = "/webhooks/mlflow"
    #: The shared secret, in the operator's environment (from a Secret) and in the
    #: environment of whoever registers the webhook.
    SECRET_ENV: Final = "MODELYARD_WEBHOOK_SECRET"
    #: The events that can move what a ModelDeployment serves: an alias moved or removed,
    #: a tag set or removed (a drift result, a shadow's comparison), a new version (a
    #: stage reference's candidates).
    EVENTS: Final = (
        "model_version_alias.created",
        "model_version_alias.deleted",
        "model_version_tag.set",
        "model_version_tag.deleted",
        "model_version.created",
    )
    SIGNATURE_HEADER: Final = "X-MLflow-Signature"
    TIMESTAMP_HEADER: Final = "X-MLflow-Timestamp"
    DELIVERY_ID_HEADER: Final = "X-MLflow-Delivery-Id"
    #: The signature is "v1,<base64 of HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>".
    SIGNATURE_VERSION: Final = "v1"


#: The training run's sample of its training features: the drift check's reference.
REFERENCE_ARTIFACT: Final = "reference/data.parquet"
REFERENCE_MAX_ROWS: Final = 200_000
REFERENCE_SAMPLE_SEED: Final = 0
#: The drift check's own run: its summary and Evidently's HTML report.
DRIFT_SUMMARY_ARTIFACT: Final = "drift/summary.json"
DRIFT_REPORT_ARTIFACT: Final = "drift/report.html"
#: The lineage context MLflow records for each dataset input of a run.
DATASET_CONTEXT_TAG: Final = "mlflow.data.context"
TRAINING_CONTEXT: Final = "training"
HOLDOUT_CONTEXT: Final = "holdout"

# ------------------------------------------------------------------ Kubernetes objects
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"
PART_OF: Final = "modelyard"
#: app.kubernetes.io/managed-by of every object the operator or the pipelines create.
MANAGED_BY: Final = "modelyard"
LABEL_PIPELINE: Final = "modelyard.io/pipeline"
LABEL_STEP: Final = "modelyard.io/step"
#: On a pipeline's step Jobs and their pods: the run date (YYYY-MM-DD) of their run.
LABEL_RUN_DATE: Final = "modelyard.io/run-date"
#: On the pods of tuning steps: the study storage's NetworkPolicy admits only these.
LABEL_STUDY_CLIENT: Final = "modelyard.io/study-client"
#: On a step Job: the run (orchestrating Job) that created it.
ANNOTATION_RUN_ID: Final = "modelyard.io/run-id"
LABEL_DRIFT_OF: Final = "modelyard.io/drift-of"
#: On pods that talk to the registry: the chart's NetworkPolicy lets only these reach MLflow.
LABEL_REGISTRY_CLIENT: Final = "modelyard.io/registry-client"

ANNOTATION_MODEL_URI: Final = "modelyard.io/model-uri"
ANNOTATION_MODEL_VERSION: Final = "modelyard.io/model-version"
ANNOTATION_DRIFT_RUN: Final = "modelyard.io/drift-run-id"
ANNOTATION_TRIGGERED_BY: Final = "modelyard.io/triggered-by"
#: On the router's pod template: a hash of its configuration, so a change rolls the pods.
ANNOTATION_CONFIG_HASH: Final = "modelyard.io/config-hash"

#: Where pipeline pods find their pipeline file and mount the lake volume.
PIPELINE_DIR: Final = "/etc/modelyard"
PIPELINE_FILE: Final = "pipeline.yaml"
LAKE_MOUNT: Final = "/var/lib/modelyard/lake"

# ------------------------------------------------------------------ the prediction log
#: Bookkeeping columns of the prediction log; the drift check ignores every ``_`` column.
LOG_MODEL_NAME_COLUMN: Final = "_model_name"
LOG_MODEL_VERSION_COLUMN: Final = "_model_version"
LOG_TIMESTAMP_COLUMN: Final = "_timestamp"
LOG_REQUEST_ID_COLUMN: Final = "_request_id"
#: The row's index within its request (0 for a one-row request): with the request id, the
#: key that joins the rows two versions logged for the same mirrored request.
LOG_ROW_COLUMN: Final = "_row"
#: How long the server took to answer the request (body read, parse, predict), in ms.
LOG_LATENCY_COLUMN: Final = "_latency_ms"
#: The model's outputs: ``prediction``, or ``prediction_0``, ``prediction_1``, ...
PREDICTION_COLUMN_PATTERN: Final = re.compile(r"^prediction(_\d+)?$")
#: Under a prediction log's base: JSON lines recording rows a server had to drop.
PREDICTION_LOG_DROPPED_DIR: Final = "_dropped"


def deployment_prediction_log(base: str, namespace: str, name: str) -> str:
    """The operator-wide log's base for one ModelDeployment: ``{base}/{namespace}/{name}``."""
    return f"{base.rstrip('/')}/{namespace}/{name}"


def prediction_log_partition(base: str, model_name: str, version: str, day: dt.date) -> str:
    """``{base}/{model}/version={version}/date={YYYY-MM-DD}``: one day of one version."""
    return f"{base.rstrip('/')}/{model_name}/version={version}/date={day.isoformat()}"


# ------------------------------------------------------------------ the drift check
class DriftExit(enum.IntEnum):
    """Exit codes of ``modelyard drift check``."""

    OK = 0
    #: A file that cannot be read, a version without lineage, bad options: retrying is futile.
    BAD_INPUT = 2
    DRIFT = 3
    #: No data in the window, or the schema does not match: not checked as a whole.
    NOT_CHECKED = 4


#: Exit codes after which the drift CronJob's pod is not retried.
DRIFT_NO_RETRY_EXIT_CODES: Final = (DriftExit.BAD_INPUT.value, DriftExit.NOT_CHECKED.value)

#: The drift window: a positive whole number of minutes, hours or days (``90m``, ``24h``,
#: ``7d``). The CRD's pattern for ``spec.monitoring.drift.window`` is this one.
WINDOW_PATTERN: Final = r"^[1-9][0-9]*[mhd]$"
_WINDOW = re.compile(WINDOW_PATTERN)
_WINDOW_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days"}


def parse_deployment(text: str) -> tuple[str, str]:
    """``team-a/churn`` -> (namespace, name) of a ModelDeployment; raises ValueError that
    says what is expected (``--deployment`` of the drift check and the shadow comparison)."""
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"{text!r} is not NAMESPACE/NAME of a ModelDeployment")
    return namespace, name


def parse_window(text: str) -> dt.timedelta:
    """``90m`` -> 90 minutes; raises ValueError that says what a window looks like."""
    if not _WINDOW.match(text):
        raise ValueError(f"{text!r} is not a window such as 90m, 24h or 7d")
    return dt.timedelta(**{_WINDOW_UNITS[text[-1]]: int(text[:-1])})


#: An amount of memory as Kubernetes writes it (``512Mi``, ``2Gi``, ``1.5G``, ``800000000``):
#: ``spec.monitoring.drift.resources`` and ``modelyard drift check --memory-budget``.
MEMORY_PATTERN: Final = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
_MEMORY = re.compile(MEMORY_PATTERN)
_MEMORY_UNITS: Final = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_memory(text: str | int) -> int:
    """``512Mi`` -> 536870912 bytes; raises ValueError that says what an amount looks like."""
    match = _MEMORY.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not an amount of memory such as 512Mi, 2Gi or 1.5G")
    number, unit = str(text).strip().removesuffix(match.group(2) or ""), match.group(2) or ""
    return int(float(number) * _MEMORY_UNITS[unit])


def format_memory(size: int) -> str:
    """Bytes as the largest binary unit that keeps a whole number: ``1Gi``, ``768Mi``."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if size and size % _MEMORY_UNITS[unit] == 0:
            return f"{size // _MEMORY_UNITS[unit]}{unit}"
    return str(size)


# ------------------------------------------------------------------ the drift check's memory
#: ``modelyard drift check --memory-budget`` when not given: well under the drift CronJob's
#: default memory limit (DRIFT_MEMORY_LIMIT), which also holds Python and its libraries.
DRIFT_MEMORY_BUDGET: Final = "512Mi"
#: The drift CronJob's memory request and limit unless ``spec.monitoring.drift.resources``
#: says otherwise.
DRIFT_MEMORY_REQUEST: Final = "512Mi"
DRIFT_MEMORY_LIMIT: Final = "2Gi"
#: The smallest limit the CRD accepts, and the smallest budget the check accepts.
DRIFT_MEMORY_LIMIT_MIN: Final = "512Mi"
DRIFT_MEMORY_BUDGET_MIN: Final = "64Mi"


def drift_memory_budget(limit: str | int) -> str:
    """The ``--memory-budget`` the operator passes for a drift pod limited to ``limit``: half
    of it, the other half for the interpreter, the libraries (pyarrow, scipy, pandas,
    MLflow, Evidently for the HTML report) and the allocators' slack. ``2Gi`` -> ``1Gi``."""
    half = parse_memory(limit) // 2
    return format_memory(max(half - half % 2**20, parse_memory(DRIFT_MEMORY_BUDGET_MIN)))
