{{/* The chart name, or nameOverride. */}}
{{- define "modelyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: the release name, with the chart name appended unless
the release name already contains it. Truncated so that "<fullname>-operator" etc. fit.
*/}}
{{- define "modelyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "modelyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; pass a dict with "ctx" (the root) and "component". */}}
{{- define "modelyard.labels" -}}
helm.sh/chart: {{ include "modelyard.chart" .ctx }}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: modelyard
{{- end -}}

{{/* On pods that talk to the registry: MLflow's NetworkPolicy admits only these. */}}
{{- define "modelyard.registryClientLabel" -}}
modelyard.io/registry-client: "true"
{{- end -}}

{{/* Selector labels; pass a dict with "ctx" and "component". */}}
{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "modelyard.operator.fullname" -}}
{{- printf "%s-operator" (include "modelyard.fullname" .) -}}
{{- end -}}

{{- define "modelyard.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "modelyard.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped object names carry the namespace: two releases of the same name in
two namespaces must not share a ClusterRole. */}}
{{- define "modelyard.operator.clusterName" -}}
{{- printf "%s-%s-operator" .Release.Namespace (include "modelyard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
A cluster-scoped role or policy of the approval model. The roles keep their well-known
names (modelyard-approver, modelyard-editor) when rbac.namePrefix is empty; set it when
two releases share a cluster.
*/}}
{{- define "modelyard.clusterRoleName" -}}
{{- printf "%smodelyard-%s" .ctx.Values.rbac.namePrefix .role | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelyard.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "modelyard.fullname" .) -}}
{{- end -}}

{{/* The in-cluster URL of the chart's MLflow server. */}}
{{- define "modelyard.mlflow.url" -}}
{{- printf "http://%s.%s.svc:%v" (include "modelyard.mlflow.fullname" .) .Release.Namespace .Values.mlflow.service.port -}}
{{- end -}}

{{/* The registry the operator and the pipelines use, unless told otherwise. */}}
{{- define "modelyard.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- include "modelyard.mlflow.url" . -}}
{{- end -}}
{{- end -}}

{{- define "modelyard.lake.claimName" -}}
{{- default (printf "%s-lake" (include "modelyard.fullname" .)) .Values.lake.persistence.existingClaim -}}
{{- end -}}

{{- define "modelyard.mlflow.claimName" -}}
{{- default (include "modelyard.mlflow.fullname" .) .Values.mlflow.persistence.existingClaim -}}
{{- end -}}

{{/* True ("true") when MLflow keeps something on its volume. */}}
{{/*
The tracking database, as `mlflow server --backend-store-uri` and `modelyard registry
migrate` take it (PostgreSQL's user and password through PGUSER/PGPASSWORD, never here).
*/}}
{{- define "modelyard.mlflow.backendStoreUri" -}}
{{- $pg := .Values.mlflow.backendStore.postgresql -}}
{{- if $pg.host -}}
postgresql+psycopg://{{ $pg.host }}:{{ $pg.port }}/{{ $pg.database }}
{{- else -}}
sqlite:////var/lib/mlflow/mlflow.db
{{- end -}}
{{- end -}}

{{/*
PostgreSQL's connection settings for libpq, from the chart's Secret (nothing without
PostgreSQL).
*/}}
{{- define "modelyard.mlflow.postgresqlEnv" -}}
{{- $pg := .Values.mlflow.backendStore.postgresql -}}
{{- if $pg.host -}}
- name: PGUSER
  valueFrom:
    secretKeyRef:
      name: {{ required "mlflow.backendStore.postgresql.existingSecret is required with mlflow.backendStore.postgresql.host" $pg.existingSecret }}
      key: {{ $pg.userKey }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pg.existingSecret }}
      key: {{ $pg.passwordKey }}
- name: PGSSLMODE
  value: {{ $pg.sslMode | quote }}
{{- end }}
{{- end -}}

{{- define "modelyard.mlflow.needsVolume" -}}
{{- if or (not .Values.mlflow.backendStore.postgresql.host) (not .Values.mlflow.artifacts.s3.bucket) -}}
true
{{- end -}}
{{- end -}}

{{/*
The Secret with the registry users' passwords (docs/security.md): yours
(mlflow.auth.existingSecret), or the one the operator creates with random passwords.
Empty when the chart's MLflow runs without users.
*/}}
{{- define "modelyard.registryCredentials" -}}
{{- if and .Values.mlflow.enabled .Values.mlflow.auth.enabled -}}
{{- default (printf "%s-registry-credentials" (include "modelyard.fullname" .)) .Values.mlflow.auth.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* A component's registry user, as environment variables MLflow's client reads. */}}
{{- define "modelyard.registryUserEnv" -}}
{{- $secret := include "modelyard.registryCredentials" .ctx -}}
{{- if $secret }}
- name: MLFLOW_TRACKING_USERNAME
  value: modelyard-{{ .user }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .user }}-password
{{- end }}
{{- end -}}

{{- define "modelyard.image" -}}
{{- $registry := .ctx.Values.image.registry -}}
{{- /* A repository that names its own registry (a host with a dot or a port, or localhost) is used as it is. */}}
{{- $first := first (splitList "/" .image.repository) -}}
{{- if or (contains "." $first) (contains ":" $first) (eq "localhost" $first) -}}
{{- $registry = "" -}}
{{- end -}}
{{- $name := printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- if $registry }}{{ printf "%s/%s" $registry $name }}{{ else }}{{ $name }}{{ end -}}
{{- end -}}

{{/* The Pod Security "restricted" profile: the pod part. */}}
{{- define "modelyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The Pod Security "restricted" profile: the container part. */}}
{{- define "modelyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The operator's namespaced permissions, the same in both modes (ClusterRole or one Role
per watched namespace). No wildcards: tests/unit/chart checks it.
*/}}
{{- define "modelyard.operator.rules" -}}
- apiGroups: [modelyard.io]
  resources: [modeldeployments]
  verbs: [get, list, watch, patch, update]
- apiGroups: [modelyard.io]
  resources: [modeldeployments/status]
  verbs: [get, patch, update]
- apiGroups: [modelyard.io]
  resources: [modelapprovals]
  verbs: [get, list, watch]
- apiGroups: [modelyard.io]
  resources: [modelapprovals/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [configmaps]
  # The canary/shadow router's nginx configuration (<name>-router, owned by its
  # ModelDeployment); watched by the managed-by label.
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [batch]
  resources: [cronjobs, jobs]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [secrets]
  # get: spec.registry.credentialsSecretRef; create/patch/delete: each ModelDeployment's
  # servers' and drift check's registry credentials, beside them (owned by it).
  verbs: [get, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/*
The pipelines to schedule, as a JSON list: the samples (files/pipelines/*.yaml, when
pipelines.samples) and pipelines.definitions; a definition named as a sample replaces
it. Each item: name, source (the YAML text, or
empty with pathInImage), schedule, timeZone, timeoutSeconds, resources, suspend, skipSteps.
*/}}
{{- define "modelyard.pipelines" -}}
{{- $items := list -}}
{{- if .Values.pipelines.samples -}}
{{- range $path, $bytes := .Files.Glob "files/pipelines/*.yaml" -}}
{{- $source := toString $bytes -}}
{{- $def := fromYaml $source -}}
{{- /* A definition of the same name replaces the sample (its schedule, suspend, ...). */ -}}
{{- if not (hasKey $.Values.pipelines.definitions $def.name) -}}
{{- $items = append $items (dict "name" $def.name "source" $source "pathInImage" "" "schedule" $def.schedule "timeZone" ($def.timezone | default "") "deadline" (include "modelyard.pipeline.deadline" (dict "def" $def "ctx" $)) "resources" ($def.resources | default dict) "suspend" false "skipSteps" list) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key, $p := .Values.pipelines.definitions -}}
{{- $def := dict -}}
{{- if $p.definition -}}
{{- $def = fromYaml $p.definition -}}
{{- if hasKey $def "Error" -}}
{{- fail (printf "pipelines.definitions.%s.definition is not valid YAML: %s" $key $def.Error) -}}
{{- end -}}
{{- else if not $p.pathInImage -}}
{{- fail (printf "pipelines.definitions.%s needs a definition (the pipeline YAML) or a pathInImage" $key) -}}
{{- end -}}
{{- $schedule := $p.schedule | default $def.schedule -}}
{{- if not $schedule -}}
{{- fail (printf "pipelines.definitions.%s has no schedule: set schedule in the pipeline or in the values" $key) -}}
{{- end -}}
{{- $items = append $items (dict "name" $key "source" ($p.definition | default "") "pathInImage" ($p.pathInImage | default "") "schedule" $schedule "timeZone" ($p.timeZone | default $def.timezone | default "") "deadline" (include "modelyard.pipeline.deadline" (dict "def" $def "ctx" $)) "resources" ($p.resources | default $def.resources | default dict) "suspend" ($p.suspend | default false) "skipSteps" ($p.skipSteps | default list)) -}}
{{- end -}}
{{- toJson $items -}}
{{- end -}}

{{/*
A pipeline run's deadline (the Job's activeDeadlineSeconds), as `modelyard pipeline
render` computes it: the pipeline's timeout plus 120 s; without one, every step's worst
case (timeout or 3600 s, times its attempts) one after the other, plus 120 s; a pipeline
file only in the image gets pipelines.activeDeadlineSeconds. Every run has a deadline: a
hung run must never block the next ones (concurrencyPolicy Forbid).
*/}}
{{- define "modelyard.pipeline.deadline" -}}
{{- $def := .def -}}
{{- if $def.timeout_seconds -}}
{{- add (int $def.timeout_seconds) 120 -}}
{{- else if $def.steps -}}
{{- $total := 120 -}}
{{- range $def.steps -}}
{{- $attempts := 1 -}}
{{- if .retries -}}{{- $attempts = .retries.attempts | default 1 -}}{{- end -}}
{{- $total = add $total (mul (int (.timeout_seconds | default 3600)) (int $attempts)) -}}
{{- end -}}
{{- $total -}}
{{- else -}}
{{- .ctx.Values.pipelines.activeDeadlineSeconds -}}
{{- end -}}
{{- end -}}

{{- define "modelyard.pipeline.cronJobName" -}}
{{- printf "%s-%s" (include "modelyard.fullname" .ctx) .name | lower | replace "_" "-" | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The pipelines' orchestrator ServiceAccount (and its Role and RoleBinding). */}}
{{- define "modelyard.pipelines.serviceAccountName" -}}
{{- printf "%s-pipelines" (include "modelyard.fullname" .) -}}
{{- end -}}

{{- define "modelyard.pipeline.configMapName" -}}
{{- printf "%s-%s-pipeline" (include "modelyard.fullname" .ctx) .name | lower | replace "_" "-" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
"true" when the chart serves the tuning steps' study storage (pipelines.tuning.storage.proxy):
Optuna's gRPC storage proxy beside MLflow, used when no existingSecret is given.
*/}}
{{- define "modelyard.studyStorage.proxy" -}}
{{- $storage := .Values.pipelines.tuning.storage -}}
{{- if and .Values.mlflow.enabled .Values.pipelines.enabled $storage.proxy.enabled (not $storage.existingSecret) -}}
true
{{- end -}}
{{- end -}}

{{/* The proxy's database: PostgreSQL beside the registry's, else SQLite on its claim. */}}
{{- define "modelyard.studyStorage.databaseUri" -}}
{{- $pg := .Values.mlflow.backendStore.postgresql -}}
{{- if $pg.host -}}
postgresql+psycopg://{{ $pg.host }}:{{ $pg.port }}/{{ .Values.pipelines.tuning.storage.proxy.postgresqlDatabase }}
{{- else -}}
sqlite:////var/lib/mlflow/studies.db
{{- end -}}
{{- end -}}
