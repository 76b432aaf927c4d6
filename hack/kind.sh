#!/usr/bin/env bash
# The e2e cluster on kind, where a Docker engine runs (CLUSTER=kind): the same tests,
# chart and images as on the built-in node.
#
#   hack/kind.sh up      create the cluster (harmless when it exists); writes
#                        .cluster/kind.kubeconfig
#   hack/kind.sh down    delete it
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
name=${KIND_CLUSTER_NAME:-modelyard}
# Images built for kind v0.30.0 (its release notes); pinned by digest as kind asks.
node_image=${KIND_NODE_IMAGE:-kindest/node:v1.33.4@sha256:25a6018e48dfcaee478f4a59af81157a437f15e6e140bf103f85a2e7cd0cbbf2}
kubeconfig=$root/.cluster/kind.kubeconfig

kind_bin() {
  local v
  v=$(cd "$root/hack/tools/kind" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' sigs.k8s.io/kind)
  local out=$cache/bin/versions/kind-$v
  if [[ ! -x $out ]]; then
    mkdir -p "$cache/bin/versions"
    (cd "$root/hack/tools/kind" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$out" sigs.k8s.io/kind)
  fi
  ln -sf "versions/kind-$v" "$cache/bin/kind"
  echo "$cache/bin/kind"
}

case ${1:-} in
  up)
    kind=$(kind_bin)
    mkdir -p "$root/.cluster"
    if ! "$kind" get clusters 2>/dev/null | grep -qx "$name"; then
      "$kind" create cluster --name "$name" --image "$node_image" --kubeconfig "$kubeconfig" --wait 5m
    fi
    "$kind" export kubeconfig --name "$name" --kubeconfig "$kubeconfig"
    # Helm and kubectl of the pinned versions.
    "$root/hack/build-tools.sh"
    ;;
  down) "$(kind_bin)" delete cluster --name "$name" ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
