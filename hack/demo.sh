#!/usr/bin/env bash
# The main job, one command (`make demo`): a local cluster with a node, the project's
# images, the chart with its embedded defaults, the sample pipeline run as a Job
# (ingest -> features -> train -> register -> alias "champion"), a ModelDeployment
# serving it, and a prediction asked from a pod through its Service.
#
# CLUSTER=local (the default) is the built-in cluster; CLUSTER=kind uses kind (a Docker
# engine must run). The choice is never made for you: a running Docker engine changes nothing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ns=${DEMO_NAMESPACE:-modelyard}
release=${DEMO_RELEASE:-modelyard}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/modelyard/_version.py)
cluster=${CLUSTER:-local}
# The chart's object names: "<release>-modelyard", or the release alone if it says modelyard.
if [[ $release == *modelyard* ]]; then prefix=$release; else prefix=$release-modelyard; fi
t0=$SECONDS

step() { printf '\n\033[1m==> [%3ss] %s\033[0m\n' "$((SECONDS - t0))" "$*"; }

case $cluster in
  local) echo "[demo] on the built-in cluster (CLUSTER=local, the default; CLUSTER=kind for kind)" ;;
  kind) echo "[demo] on kind (CLUSTER=kind: a Docker engine, started if none runs, and a kind node; see README)" ;;
  *) echo "[demo] ERROR: CLUSTER=$cluster: use CLUSTER=local (the built-in cluster) or CLUSTER=kind" >&2
     exit 2 ;;
esac

step "cluster ($cluster)"
if [[ $cluster == kind ]]; then
  hack/kind.sh up
  export KUBECONFIG=$root/.cluster/kind.kubeconfig
  env_hint="export KUBECONFIG=$root/.cluster/kind.kubeconfig PATH=${MODELYARD_CACHE:-$HOME/.cache/modelyard}/bin:\$PATH"
  down_hint="hack/kind.sh down"
else
  NODE=1 hack/cluster.sh up
  eval "$(hack/cluster.sh env)"
  env_hint='eval "$(make -s cluster-env)"'
  down_hint="make cluster-down"
fi
export PATH=${MODELYARD_CACHE:-$HOME/.cache/modelyard}/bin:$PATH

step "images (built from the Dockerfiles, loaded into the node; cached after the first time)"
CLUSTER=$cluster hack/images.sh

step "helm install $release charts/modelyard (namespace $ns)"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$ns" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
# Not `helm --wait`: the data-lake claim binds only when a pipeline pod first uses it.
# image.registry empty: the images hack/images.sh loaded into the node, not the published ones.
helm upgrade --install "$release" charts/modelyard -n "$ns" --set image.registry= \
  --set pipelines.suspend=true
kubectl -n "$ns" wait --for=condition=Available deployment \
  -l "app.kubernetes.io/instance=$release" --timeout=10m
kubectl -n "$ns" get pods

step "the sample pipeline as a Job: ingest -> features -> train -> register -> champion"
job=churn-demo-$(date +%s)
kubectl -n "$ns" create job "$job" --from="cronjob/$prefix-churn"
if ! kubectl -n "$ns" wait --for=condition=Complete "job/$job" --timeout=20m; then
  kubectl -n "$ns" logs "job/$job" --tail=50
  exit 1
fi
kubectl -n "$ns" logs "job/$job" --tail=25

step "a ModelDeployment serving churn@champion"
kubectl -n "$ns" apply -f manifests/samples/churn-alias.yaml
kubectl -n "$ns" wait --for=condition=Ready md/churn --timeout=10m
kubectl -n "$ns" get md churn

step "a prediction, asked from a pod through the Service"
kubectl -n "$ns" delete pod demo-predict --ignore-not-found >/dev/null
kubectl -n "$ns" create configmap demo-predict --from-file=predict.py=hack/demo/predict.py \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: demo-predict
  # MLflow's NetworkPolicy admits the toolkit's registry clients only (docs/security.md).
  labels: {modelyard.io/registry-client: "true"}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: predict
      image: modelyard/toolkit:$version
      imagePullPolicy: IfNotPresent
      command: [python3, /demo/predict.py]
      env:
        - {name: DEMO_NAMESPACE, value: $ns}
        - {name: MLFLOW_TRACKING_URI, value: "http://$prefix-mlflow.$ns.svc.cluster.local:5000"}
        # The model servers' read-only registry user.
        - {name: MLFLOW_TRACKING_USERNAME, value: modelyard-server}
        - name: MLFLOW_TRACKING_PASSWORD
          valueFrom: {secretKeyRef: {name: $prefix-registry-credentials, key: server-password}}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: demo, mountPath: /demo}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - {name: demo, configMap: {name: demo-predict}}
    - {name: tmp, emptyDir: {}}
EOF
kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/demo-predict --timeout=5m ||
  { kubectl -n "$ns" logs demo-predict; exit 1; }
mkdir -p .modelyard
kubectl -n "$ns" logs demo-predict >.modelyard/demo-predict.log
grep -v '^request body: ' .modelyard/demo-predict.log | grep -v 'Downloading artifacts'
sed -n 's/^request body: //p' .modelyard/demo-predict.log >.modelyard/demo-request.json
kubectl -n "$ns" delete pod demo-predict --ignore-not-found >/dev/null

step "done in $((SECONDS - t0))s"
cat <<EOF
Send more:
  $env_hint
  kubectl -n $ns port-forward svc/churn 8000:80 &
  curl -s localhost:8000/invocations -H 'Content-Type: application/json' \
    -d @.modelyard/demo-request.json
  kubectl -n $ns port-forward svc/$prefix-mlflow 5000:5000   # MLflow UI, user admin:
  kubectl -n $ns get secret $prefix-registry-credentials -o jsonpath='{.data.admin-password}' | base64 -d
  kubectl get md -A

Clean up:
  helm uninstall $release -n $ns && kubectl delete namespace $ns
  $down_hint
EOF
