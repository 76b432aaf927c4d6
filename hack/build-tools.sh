#!/usr/bin/env bash
# Builds the pinned cluster binaries (etcd, Kubernetes, Helm) and the tests' S3 server
# (SeaweedFS) from the Go module proxy into $MODELYARD_CACHE/bin/<tool>-<version>/ and links them into $MODELYARD_CACHE/bin.
# Versions come from the go.mod files under hack/tools/; a binary already built for the
# pinned version is reused, so a warm run takes seconds.
#
#   hack/build-tools.sh            # control plane + kubectl + helm + weed (SeaweedFS,
#                                  # the S3-compatible server of tests/support/s3.py)
#   hack/build-tools.sh node       # also kubelet, kube-proxy, crictl, CoreDNS and
#                                  # kube-network-policies (NODE=1)
#   hack/build-tools.sh kind       # the node's binaries and kubeadm (the kind node image,
#                                  # hack/kind.sh image)
#   hack/build-tools.sh cli        # only kubectl and helm (what the unit tests run)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
bin=$cache/bin
mkdir -p "$bin"

log() { printf '[build-tools] %s\n' "$*" >&2; }

modver() { # modver DIR MODULE -> version required by DIR/go.mod
  (cd "$here/tools/$1" && go list -m -f '{{.Version}}' "$2")
}

# build DIR OUTNAME VERSION PKG [extra go build args...]
build() {
  local dir=$1 name=$2 version=$3 pkg=$4 lock_fd; shift 4
  local dest=$bin/versions/$name-$version
  if [[ -x $dest ]]; then
    ln -sf "versions/$name-$version" "$bin/$name"
    return
  fi
  mkdir -p "$bin/versions"
  # Two runs at once (two worktrees, a test starting a cluster) build it once: the second
  # waits for the first and then finds the binary.
  exec {lock_fd}>"$dest.lock"
  flock "$lock_fd"
  if [[ ! -x $dest ]]; then
    log "building $name $version (first time; cached afterwards)"
    local start=$SECONDS
    (cd "$here/tools/$dir" && go build -trimpath -o "$dest.tmp.$$" "$@" "$pkg")
    mv "$dest.tmp.$$" "$dest"
    log "built $name in $((SECONDS - start))s"
  fi
  exec {lock_fd}>&-
  ln -sf "versions/$name-$version" "$bin/$name"
}

k8s_version=$(modver kubernetes k8s.io/kubernetes)
etcd_version=$(modver etcd go.etcd.io/etcd/server/v3)
helm_version=$(modver helm helm.sh/helm/v3)
crictl_version=$(modver crictl sigs.k8s.io/cri-tools)
coredns_version=$(modver coredns github.com/coredns/coredns)
knp_version=$(modver kube-network-policies sigs.k8s.io/kube-network-policies)
seaweedfs_version=$(modver seaweedfs github.com/seaweedfs/seaweedfs)

# Same version stamping as kubernetes' hack/lib/version.sh, so `kubectl version`
# and /version report the real release instead of v0.0.0-master.
k8s_ldflags() {
  local v=$k8s_version major minor
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  local flags="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.gitCommit=modelyard-$v"
    flags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$flags"
}

k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
mode=${1:-}
if [[ $mode == node ]]; then
  k8s_cmds+=(kube-proxy kubelet)
elif [[ $mode == kind ]]; then
  k8s_cmds+=(kube-proxy kubelet kubeadm)
elif [[ ${1:-} == cli ]]; then
  k8s_cmds=(kubectl)
fi

if [[ ${1:-} != cli ]]; then
  build etcd etcd "$etcd_version" go.etcd.io/etcd/server/v3 -ldflags "-s -w"
fi
if [[ $mode == kind ]]; then
  # For the kind node's etcd image, which has no C library (FROM scratch).
  CGO_ENABLED=0 build etcd etcd-static "$etcd_version" go.etcd.io/etcd/server/v3 -ldflags "-s -w"
fi
for c in "${k8s_cmds[@]}"; do
  if [[ $c == kubelet ]]; then
    build kubernetes "$c" "$k8s_version" "k8s.io/kubernetes/cmd/$c" \
      -tags selinux,notest -ldflags "$(k8s_ldflags)"
  else
    CGO_ENABLED=0 build kubernetes "$c" "$k8s_version" "k8s.io/kubernetes/cmd/$c" \
      -tags selinux,notest -ldflags "$(k8s_ldflags)"
  fi
done
CGO_ENABLED=0 build helm helm "$helm_version" helm.sh/helm/v3/cmd/helm \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
if [[ ${1:-} != cli ]]; then
  # Only the tests run it (integration and e2e S3); it is never in the chart or an image.
  CGO_ENABLED=0 build seaweedfs weed "$seaweedfs_version" \
    github.com/seaweedfs/seaweedfs/weed -ldflags "-s -w"
fi
if [[ $mode == node || $mode == kind ]]; then
  CGO_ENABLED=0 build crictl crictl "$crictl_version" sigs.k8s.io/cri-tools/cmd/crictl \
    -ldflags "-s -w"
  CGO_ENABLED=0 build coredns coredns "$coredns_version" github.com/coredns/coredns \
    -ldflags "-s -w"
  # NetworkPolicy for the node (the bridge CNI enforces none).
  CGO_ENABLED=0 build kube-network-policies kube-network-policies "$knp_version" \
    sigs.k8s.io/kube-network-policies/cmd -ldflags "-s -w"
fi
log "binaries ready in $bin"
