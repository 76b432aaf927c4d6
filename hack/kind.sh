#!/usr/bin/env bash
# The cluster on kind (CLUSTER=kind): one kind node in a Docker container, the same chart,
# images and tests as on the built-in node.
#
#   hack/kind.sh up       start a Docker engine if none runs, build the node image, create
#                         the cluster (harmless when it exists); writes
#                         .cluster/kind.kubeconfig
#   hack/kind.sh down     delete the cluster (the Docker engine keeps running)
#   hack/kind.sh image    build the node image only (modelyard/kind-node:<k8s>-<hash>) and
#                         load it into the Docker engine
#   hack/kind.sh prepare  what `up` needs that is slow to make, without starting anything:
#                         Debian's docker.io installed, kind built, the node image's
#                         archive built (CI runs it in the background beside the tests)
#   hack/kind.sh docker   start a Docker engine only (dockerd from Debian's docker.io)
#   hack/kind.sh node     print the node container's name
#
# The node image is built here, from source, because nothing can be pulled on these
# machines (hack/kind/node/Dockerfile says what is in it); it is cached by the hash of its
# inputs like the project's other images. KIND_NODE_IMAGE=kindest/node:... uses kind's
# own image instead (what GitHub's runners do, .github/workflows/e2e.yaml).
set -euo pipefail
# The image helpers (base, archive_of, qualified, pause_archive) and the paths they share
# (root, cache, bin, store, kind_node); sourced, it only defines.
# shellcheck source=hack/images.sh
source "$(dirname "$0")/images.sh"
name=${KIND_CLUSTER_NAME:-modelyard}
kubeconfig=$root/.cluster/kind.kubeconfig
logs=$root/.cluster/logs
# Local PersistentVolumes baked into the node (hack/node/volumes.sh), as on the built-in node.
volumes=${NODE_VOLUMES:-12}
log() { printf '[kind] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

modver() { (cd "$root/hack/tools/$1" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' "$2"); }

kind_bin() {
  local v
  v=$(modver kind sigs.k8s.io/kind)
  local out=$cache/bin/versions/kind-$v
  if [[ ! -x $out ]]; then
    mkdir -p "$cache/bin/versions"
    (cd "$root/hack/tools/kind" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$out" sigs.k8s.io/kind)
  fi
  ln -sf "versions/kind-$v" "$cache/bin/kind"
  echo "$cache/bin/kind"
}

# ------------------------------------------------------------------------ the engine
# A host whose capability bounding set lacks a capability (CAP_SYS_RESOURCE on these
# machines) cannot start privileged containers: runc asks for every capability. There
# dockerd runs its containers through hack/kind/runc-capfix, which drops what is missing.
caps_missing() {
  local bounding
  bounding=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
  # The 41 capabilities up to CAP_CHECKPOINT_RESTORE.
  (((16#$bounding & 0x1ffffffffff) != 0x1ffffffffff))
}

docker_package() {
  command -v dockerd >/dev/null && return
  [[ $(id -u) == 0 ]] || die "no Docker engine is installed, and installing one needs root"
  command -v apt-get >/dev/null || die "no Docker engine: install one (or Debian's docker.io)"
  log "installing Debian's docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq \
    --no-install-recommends docker.io \
    >/dev/null
}

docker_engine() {
  if docker info >/dev/null 2>&1; then
    if caps_missing && ! docker info --format '{{.DefaultRuntime}}' | grep -q capfix; then
      log "WARNING: this host lacks a capability that privileged containers ask for, and the"
      log "running Docker engine does not drop it: kind's node may fail to start. Stop it and"
      log "let hack/kind.sh start one (it adds hack/kind/runc-capfix as its runtime)."
    fi
    return
  fi
  [[ $(id -u) == 0 ]] || die "no Docker engine runs, and starting one needs root"
  docker_package
  # Forwarding already on: dockerd then leaves the FORWARD chain's policy as it is (it sets
  # DROP only when it turns forwarding on itself), so the built-in node's pods keep talking
  # on the same machine. The built-in node accepts its own pod traffic explicitly too.
  echo 1 >/proc/sys/net/ipv4/ip_forward
  local args=(--host unix:///var/run/docker.sock --pidfile /var/run/modelyard-dockerd.pid)
  if caps_missing; then
    install -D -m 0755 "$root/hack/kind/runc-capfix" "$bin/runc-capfix"
    args+=(--add-runtime "capfix=$bin/runc-capfix" --default-runtime capfix)
  fi
  mkdir -p "$logs"
  log "starting dockerd (log: $logs/dockerd.log)"
  setsid dockerd "${args[@]}" >>"$logs/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  tail -20 "$logs/dockerd.log" >&2
  die "dockerd did not answer within 60s"
}

# --------------------------------------------------------------------- the node image

k8s_version() { modver kubernetes k8s.io/kubernetes; }
etcd_tag() { modver etcd go.etcd.io/etcd/server/v3; }
coredns_tag() { modver coredns github.com/coredns/coredns; }

# kube-proxy programs iptables and clears conntrack entries with these tools.
kube_proxy_packages="iptables=1.8.9-2 conntrack=1:1.4.7-1+b2"

# component_image IMAGE BINARY [FROM]: a control-plane image kubeadm runs by name, with
# the binary at /usr/local/bin (static pods name the command, not a path); root, as
# kubeadm's static pods expect. FROM is scratch (static binaries) or kube-proxy (the base
# image with kube_proxy_packages).
component_image() {
  local image=$1 file=$2 from=${3:-scratch} hash archive ctr
  hash=$( (sha256sum "$file" | cut -c1-64; echo "$from"
    [[ $from == scratch ]] || echo "$kube_proxy_packages") | sha256sum | cut -c1-16)
  archive=$(archive_of "$image" "$hash")
  if [[ ! -f $archive ]]; then
    log "building $image"
    rm -f "$store/${image//[\/:]/_}"-*.tar
    if [[ $from == kube-proxy ]]; then
      base
      ctr=$(buildah from --pull=never "$base_image")
      buildah run --network host "$ctr" -- sh -c "apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $kube_proxy_packages >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*" >&2
    else
      ctr=$(buildah from scratch)
    fi
    buildah copy --quiet "$ctr" "$file" "/usr/local/bin/$(basename "${image%:*}")" >/dev/null
    buildah config --cmd '' --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --user 0:0 \
      --entrypoint "[\"/usr/local/bin/$(basename "${image%:*}")\"]" "$ctr"
    buildah commit --quiet --rm "$ctr" "$image" >/dev/null
    buildah push --quiet "$image" "oci-archive:$archive.tmp:$(qualified "$image")" >&2
    mv "$archive.tmp" "$archive"
  fi
  echo "$archive"
}

build_node_image() {
  "$root/hack/build-tools.sh" kind >&2
  # The image store's lock, as hack/images.sh takes it: the node image shares the base and
  # the pause and NetworkPolicy archives with the built-in node's images, and CI builds it
  # beside the tests (`prepare`).
  mkdir -p "$store"
  local lock_fd
  exec {lock_fd}>"$store/.build.lock"
  flock "$lock_fd"
  local k8s stage archives=() a
  k8s=$(k8s_version)
  archives+=("$(component_image "registry.k8s.io/kube-apiserver:$k8s" "$bin/kube-apiserver")")
  archives+=("$(component_image "registry.k8s.io/kube-controller-manager:$k8s" "$bin/kube-controller-manager")")
  archives+=("$(component_image "registry.k8s.io/kube-scheduler:$k8s" "$bin/kube-scheduler")")
  archives+=("$(component_image "registry.k8s.io/kube-proxy:$k8s" "$bin/kube-proxy" kube-proxy)")
  archives+=("$(component_image "registry.k8s.io/etcd:$(etcd_tag)" "$bin/etcd-static")")
  archives+=("$(component_image "registry.k8s.io/coredns/coredns:$(coredns_tag)" "$bin/coredns")")
  archives+=("$(pause_archive)")
  # NetworkPolicy, as on the built-in node (kindest/node has it in kindnetd).
  archives+=("$(knp_archive)")
  # The build context: the Dockerfile, its files, the binaries and the image archives.
  mkdir -p "$cache/build"
  stage=$(mktemp -d "$cache/build/kind-node.XXXXXX")
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -rf '$stage'" EXIT
  mkdir -p "$stage/bin" "$stage/images" "$stage/files/kind/manifests" "$stage/files/kind"
  cp -a "$root/hack/kind/node/Dockerfile" "$stage/"
  cp -a "$root/hack/kind/node/files/." "$stage/files/"
  cp -a "$root/hack/kind/runc-capfix" "$stage/runc-capfix"
  for a in kubelet kubeadm kubectl crictl; do cp -L "$bin/$a" "$stage/bin/$a"; done
  for a in "${archives[@]}"; do cp "$a" "$stage/images/"; done
  echo "$k8s" >"$stage/files/kind/version"
  { echo "---"; sed "s|@KNP_IMAGE@|$(knp_image)|" "$root/hack/node/kube-network-policies.yaml"; } \
    >>"$stage/files/kind/manifests/default-cni.yaml"
  "$root/hack/node/volumes.sh" "$volumes" /var/local-volumes kubernetes.io/os=linux \
    >"$stage/files/kind/manifests/default-storage.yaml"
  for a in $(seq -w 1 "$volumes"); do mkdir -p "$stage/files/var/local-volumes/local-pv-$a"; done
  local hash tag archive
  hash=$( (cd "$stage" && find . -type f -print0 | sort -z | xargs -0 sha256sum;
    find . -type d | sort; cat "$root/hack/base-packages.lock") | sha256sum | cut -c1-12)
  tag=modelyard/kind-node:$k8s-$hash
  archive=$(archive_of "$tag" "$hash")
  if [[ ! -f $archive ]]; then
    local t0=$SECONDS
    log "building the kind node image $tag (Kubernetes $k8s, built here)"
    rm -f "$store"/modelyard_kind-node_*.tar
    base
    buildah bud --quiet --layers --pull=never --network=host \
      --build-arg "BASE_IMAGE=$base_image" -t "$tag" "$stage" >&2
    buildah push --quiet "$tag" "docker-archive:$archive.tmp:$tag" >&2
    mv "$archive.tmp" "$archive"
    log "built $tag in $((SECONDS - t0))s"
  fi
  flock -u "$lock_fd"
  echo "$tag"
}

# load_node_image TAG: the built image into the Docker engine, unless it has it.
load_node_image() {
  local tag=$1
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    log "loading $tag into Docker"
    docker load -i "$(archive_of "$tag" "${tag##*-}")" >/dev/null
    # Earlier builds' node images are not needed any more (a running node keeps its own).
    docker images --format '{{.Repository}}:{{.Tag}}' modelyard/kind-node | grep -vx "$tag" |
      xargs -r docker rmi >/dev/null 2>&1 || true
  fi
}

# ----------------------------------------------------------------------- the cluster
# kind's config for the node image built here:
# - kubeadm names etcd's and CoreDNS's images by the versions it was released with; the
#   node has the ones this project pins (hack/tools), so name those;
# - the control plane runs on the node and shares its CPUs with the pods: the image's
#   kubeadm patches (/kind/patches) ask 25m each instead of kubeadm's 650m in all.
kind_config() {
  cat <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
kubeadmConfigPatches:
  - |
    kind: InitConfiguration
    patches:
      directory: /kind/patches
  - |
    kind: ClusterConfiguration
    etcd:
      local:
        imageTag: $(etcd_tag)
    dns:
      imageTag: $(coredns_tag)
EOF
}

up() {
  docker_engine
  local kind image
  kind=$(kind_bin)
  if [[ -n ${KIND_NODE_IMAGE:-} ]]; then
    image=$KIND_NODE_IMAGE
  else
    image=$(build_node_image)
    load_node_image "$image"
  fi
  mkdir -p "$root/.cluster" "$logs"
  if ! "$kind" get clusters 2>/dev/null | grep -qx "$name"; then
    local t0=$SECONDS
    log "creating cluster $name on $image"
    local config=$root/.cluster/kind-config.yaml
    if [[ -z ${KIND_NODE_IMAGE:-} ]]; then
      kind_config >"$config"
    else
      printf 'kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n' >"$config"
    fi
    if ! "$kind" create cluster --name "$name" --image "$image" --config "$config" \
      --kubeconfig "$kubeconfig" --wait 5m; then
      "$kind" export logs --name "$name" "$logs/kind" >/dev/null 2>&1 || true
      die "kind create cluster failed; the node's logs are in $logs/kind"
    fi
    log "cluster $name ready in $((SECONDS - t0))s"
  fi
  "$kind" export kubeconfig --name "$name" --kubeconfig "$kubeconfig" >/dev/null 2>&1
  # Helm and kubectl of the pinned versions.
  "$root/hack/build-tools.sh" cli
  # kind waits for the node; the chart also needs cluster DNS. One CoreDNS asking 50m, as
  # on the built-in node: on a 2-core machine the pods need the rest.
  local k=("$bin/kubectl" --kubeconfig "$kubeconfig" -n kube-system)
  if [[ -z ${KIND_NODE_IMAGE:-} ]]; then
    "${k[@]}" scale deployment/coredns --replicas=1 >/dev/null
    "${k[@]}" set resources deployment/coredns --requests=cpu=50m >/dev/null
  fi
  "${k[@]}" rollout status deployment/coredns --timeout=180s >/dev/null ||
    die "CoreDNS did not become available on kind"
}

case ${1:-} in
  up) up ;;
  down) "$(kind_bin)" delete cluster --name "$name" ;;
  image) docker_engine; tag=$(build_node_image); load_node_image "$tag"; echo "$tag" ;;
  prepare) docker_package; kind_bin >/dev/null; build_node_image >/dev/null ;;
  docker) docker_engine ;;
  node) echo "$kind_node" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
