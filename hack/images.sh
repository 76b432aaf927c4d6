#!/usr/bin/env bash
# Builds the project's images from its own Dockerfiles and loads them into the cluster.
#
#   hack/images.sh build      build the images (docker build with a Docker engine,
#                             else buildah from a debootstrap base image)
#   hack/images.sh load       load them into the node: `ctr import` into its containerd
#                             (the built-in node's, or the kind node's through docker exec)
#   hack/images.sh            both
#   hack/images.sh pin        record the base image's Debian package versions that the
#                             archive serves today in hack/base-packages.lock
#
# Images, one per component (docs/contracts.md), the targets of the Dockerfile:
# modelyard/operator:<version>, modelyard/server:<version>, modelyard/toolkit:<version>
# (pipelines, drift checks, MLflow), modelyard/router:<version> (nginx, for canaries);
# for the built-in node also the pause and CoreDNS images (nothing can be pulled there).
#
# Built images are kept as archives under $MODELYARD_CACHE/images, keyed by a hash of
# their own inputs (the Dockerfile, the locks, src/ and the component's folder; the
# router, which has no code of ours, only the Dockerfile): a change to one component
# rebuilds only its image, an unchanged tree builds nothing.
# IMAGE_BUILDER=buildah (default where installed) or docker.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
bin=$cache/bin
store=$cache/images
# The kind node's container (hack/kind.sh creates it).
kind_node=${KIND_CLUSTER_NAME:-modelyard}-control-plane
dir=${CLUSTER_DIR:-$root/.cluster}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/src/modelyard/_version.py")
pause_image=${PAUSE_IMAGE:-registry.k8s.io/pause:3.10}
base_image=localhost/modelyard/debian:bookworm
operator_image=modelyard/operator:$version
server_image=modelyard/server:$version
toolkit_image=modelyard/toolkit:$version
router_image=modelyard/router:$version
cluster=${CLUSTER:-local}
builder=${IMAGE_BUILDER:-$(command -v buildah >/dev/null 2>&1 && echo buildah || echo docker)}
mkdir -p "$store"

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# inputs_hash FILE...: a hash of the image's inputs (tracked files and their content).
inputs_hash() {
  (
    cd "$root"
    local f
    # Tracked and untracked (not ignored) files alike: what the build context holds.
    git ls-files -z -co --exclude-standard -- "$@" | sort -z | while IFS= read -r -d '' f; do
      if [[ -L $f ]]; then
        printf 'link %s %s\n' "$f" "$(readlink "$f")"
      elif [[ -f $f ]]; then
        sha256sum "$f"
      fi
    done
  ) | sha256sum | cut -c1-16
}

# The CRI resolves a short name like modelyard/server:1 to docker.io/modelyard/server:1,
# so images are imported into containerd under their fully qualified names.
qualified() {
  local first=${1%%/*}
  if [[ $1 == */* && ( $first == *.* || $first == *:* || $first == localhost ) ]]; then
    printf '%s' "$1"
  else
    printf 'docker.io/%s' "$1"
  fi
}

archive_of() { # archive_of IMAGE HASH
  local safe=${1//[\/:]/_}
  printf '%s/%s-%s.tar' "$store" "$safe" "$2"
}

# ------------------------------------------------------------------- buildah images
# The base image's Debian packages are pinned: hack/base-packages.lock records the version
# of every package in it. Only Debian's regular archive is reachable here, and it serves
# only the newest version of each package, so a build whose debootstrap got a different
# version fails, naming each package, instead of silently shipping something else.
# `hack/images.sh pin` records what the archive serves now (review the diff, commit it).
pins=$root/hack/base-packages.lock

# rootfs_packages TAR: "package=version" for each package installed in the rootfs archive.
rootfs_packages() {
  tar -xOf "$1" ./var/lib/dpkg/status | awk '
    /^Package:/ { p = $2 } /^Status:/ { ok = ($4 == "installed") } /^Version:/ { v = $2 }
    /^$/ { if (ok) print p "=" v; p = ""; ok = 0 }
    END { if (ok && p != "") print p "=" v }' | sort
}

# check_pins TAR: fail loudly when the rootfs differs from the recorded versions.
check_pins() {
  local tar=$1 problems
  problems=$(diff <(grep -v '^#' "$pins" | sed '/^$/d') <(rootfs_packages "$tar") | awk '
    /^</ { split(substr($0, 3), a, "="); want[a[1]] = a[2] }
    /^>/ { split(substr($0, 3), a, "="); got[a[1]] = a[2] }
    END {
      for (p in want) print "  " p ": recorded " want[p] ", the archive served " ((p in got) ? got[p] : "nothing (package gone)")
      for (p in got) if (!(p in want)) print "  " p ": not recorded, the archive served " got[p]
    }' | sort) || true
  if [[ -n $problems ]]; then
    log "ERROR: the base image's Debian packages differ from hack/base-packages.lock:"
    printf '%s\n' "$problems" >&2
    log "Debian's archive no longer serves the recorded versions. Review the changes (security"
    log "updates, usually), then record them with 'hack/images.sh pin' and commit the lock."
    return 1
  fi
}

# debootstrap_rootfs TAR: a minimal bookworm with python3, made with debootstrap.
debootstrap_rootfs() {
  local tar=$1 rootfs
  log "making the base image with debootstrap (first time, about a minute)"
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$tar.tmp" .
  rm -rf "$rootfs"
  mv "$tar.tmp" "$tar"
}

# pin: record the versions the archive serves today in hack/base-packages.lock.
pin() {
  local tar=$store/debian-bookworm-rootfs.tar
  rm -f "$tar"
  debootstrap_rootfs "$tar"
  {
    echo "# The base image's Debian packages (bookworm, debootstrap minbase + python3,"
    echo "# python3-venv, ca-certificates), as 'hack/images.sh pin' recorded them."
    rootfs_packages "$tar"
  } > "$pins"
  log "recorded $(grep -vc '^#' "$pins") packages in $pins"
}

base() {
  local tar=$store/debian-bookworm-rootfs.tar
  if [[ -f $tar ]] && buildah inspect --type image "$base_image" >/dev/null 2>&1 \
    && check_pins "$tar" 2>/dev/null; then
    return
  fi
  buildah rmi --force "$base_image" >/dev/null 2>&1 || true
  # A cached rootfs made before the lock changed is made again, so the cached and the
  # fresh path give the same image; a fresh one that differs from the lock fails.
  if [[ -f $tar ]] && ! check_pins "$tar" 2>/dev/null; then
    log "the cached base rootfs differs from hack/base-packages.lock: making it again"
    rm -f "$tar"
  fi
  if [[ ! -f $tar ]]; then
    debootstrap_rootfs "$tar"
    check_pins "$tar" || { rm -f "$tar"; die "the base image's packages are not the pinned ones"; }
  fi
  local ctr
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
  buildah commit --quiet --rm "$ctr" "$base_image" >/dev/null
  log "base image $base_image ready"
}

# build_dockerfile IMAGE TARGET: build the Dockerfile's TARGET, keep an archive of it.
build_dockerfile() {
  local image=$1 target=$2 hash archive inputs=(Dockerfile .dockerignore)
  case $target in
    operator) inputs+=(operator locks/operator.txt) ;;
    server) inputs+=(serving locks/server.txt) ;;
    toolkit) inputs+=(pipelines locks/pipelines.txt) ;;
    router) ;; # nginx from Debian: the Dockerfile is all its input
    *) die "no image target $target" ;;
  esac
  if [[ $target != router ]]; then
    inputs+=(src pyproject.toml README.md locks/bootstrap.txt)
  fi
  hash=$(inputs_hash "${inputs[@]}")
  archive=$(archive_of "$image" "$hash")
  if [[ -f $archive ]]; then
    log "$image: unchanged, cached at $archive"
    echo "$archive"
    return
  fi
  local t0=$SECONDS
  log "building $image (Dockerfile, target $target, $builder)"
  mkdir -p "$cache/uv"
  rm -f "$store/${image//[\/:]/_}"-*.tar
  if [[ $builder == docker ]]; then
    docker build --target "$target" -t "$image" "$root" >&2
    docker save -o "$archive.tmp" "$image"
  else
    base
    # `--layers` keeps every superseded stage as a dangling image; a machine that builds
    # often fills its disk with them (48 GB seen). Below 20 GB free they are pruned first.
    local free
    free=$(df --output=avail -k /var/lib/containers 2>/dev/null | tail -1 || echo 0)
    if ((${free:-0} < 20 * 1024 * 1024)); then
      log "less than 20 GB free: pruning dangling build images"
      buildah rmi --prune >/dev/null 2>&1 || true
    fi
    # The installers' cache is a volume: rebuilding after a code change downloads nothing.
    local extra=()
    # Where the host reaches PyPI through a TLS-inspecting proxy, the build trusts the
    # host's CA bundle; it is mounted for the build only, never part of the image.
    local ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
    if [[ -n $ca && -f $ca ]]; then
      extra+=(-v "$ca:/etc/ssl/certs/build-ca.pem:ro" --build-arg PIP_CERT=/etc/ssl/certs/build-ca.pem)
    fi
    buildah bud --quiet --layers --pull=never --network=host \
      --build-arg "BASE_IMAGE=$base_image" -v "$cache/uv:/root/.cache/uv" "${extra[@]}" \
      --target "$target" -t "$image" "$root" >&2
    buildah push --quiet "$image" "oci-archive:$archive.tmp:$(qualified "$image")" >&2
  fi
  mv "$archive.tmp" "$archive"
  log "built $image in $((SECONDS - t0))s"
  echo "$archive"
}

# scratch_image IMAGE FILE ENTRYPOINT...: a FROM-scratch image with one static binary.
scratch_image() {
  local image=$1 file=$2; shift 2
  local hash archive ctr
  hash=$(sha256sum "$file" | cut -c1-16)
  archive=$(archive_of "$image" "$hash")
  if [[ ! -f $archive ]]; then
    ctr=$(buildah from scratch)
    buildah copy --quiet "$ctr" "$file" "/$(basename "$file")" >/dev/null
    local ep
    ep=$(printf '"%s",' "$@")
    buildah config --entrypoint "[${ep%,}]" --user 65535:65535 "$ctr"
    buildah commit --quiet --rm "$ctr" "$image" >/dev/null
    buildah push --quiet "$image" "oci-archive:$archive.tmp:$(qualified "$image")" >&2
    mv "$archive.tmp" "$archive"
  fi
  echo "$archive"
}

pause_archive() {
  local out=$cache/build/pause
  mkdir -p "$out"
  if [[ ! -x $out/pause || $root/hack/images/pause/pause.c -nt $out/pause ]]; then
    gcc -Os -static -o "$out/pause" "$root/hack/images/pause/pause.c"
  fi
  scratch_image "$pause_image" "$out/pause" /pause
}

coredns_archive() {
  local v
  v=$(readlink "$bin/coredns" | sed 's/.*coredns-//')
  [[ -n $v ]] || die "CoreDNS is not built: run hack/build-tools.sh node"
  scratch_image "modelyard/coredns:$v" "$bin/coredns" /coredns
}

knp_archive() {
  local v
  v=$(readlink "$bin/kube-network-policies" | sed 's/.*kube-network-policies-//')
  [[ -n $v ]] || die "kube-network-policies is not built: run hack/build-tools.sh node"
  scratch_image "modelyard/kube-network-policies:$v" "$bin/kube-network-policies" \
    /kube-network-policies
}

knp_image() {
  printf 'modelyard/kube-network-policies:%s' \
    "$(readlink "$bin/kube-network-policies" | sed 's/.*kube-network-policies-//')"
}

build() {
  build_dockerfile "$operator_image" operator >/dev/null
  build_dockerfile "$server_image" server >/dev/null
  build_dockerfile "$toolkit_image" toolkit >/dev/null
  build_dockerfile "$router_image" router >/dev/null
}

# -------------------------------------------------------------------------- loading
# node_ctr ARGS...: ctr on the node's containerd, in the CRI's namespace. The one place that
# knows how each cluster is reached: the built-in node's own socket, or `docker exec` into
# the kind node ($kind_node), where containerd has the default socket.
node_ctr() {
  if [[ $cluster == kind ]]; then
    docker exec -i "$kind_node" ctr --namespace=k8s.io "$@"
  else
    local sock
    sock=$(cat "$dir/containerd/address" 2>/dev/null || true)
    [[ -S $sock ]] || die "no node containerd (socket ${sock:-unknown}): start the cluster with NODE=1"
    ctr -a "$sock" --namespace=k8s.io "$@"
  fi
}

ctr_import() { # ctr_import ARCHIVE IMAGE: import unless the node has this very archive
  local want
  want=$(basename "$1")
  set -- "$1" "$(qualified "$2")"
  # A label on the image remembers which archive (inputs hash) it came from.
  if node_ctr images ls "name==$2" 2>/dev/null | grep -q "modelyard.io/archive=$want"; then
    return
  fi
  log "importing $2 into the node"
  node_ctr images import --all-platforms - <"$1" >/dev/null
  node_ctr images label "$2" "modelyard.io/archive=$want" >/dev/null
}

load() {
  if [[ $cluster != kind ]]; then
    # The kind node has these in its image (hack/kind.sh image).
    ctr_import "$(pause_archive)" "$pause_image"
    ctr_import "$(coredns_archive)" "modelyard/coredns:$(readlink "$bin/coredns" | sed 's/.*coredns-//')"
  fi
  ctr_import "$(build_dockerfile "$operator_image" operator)" "$operator_image"
  ctr_import "$(build_dockerfile "$server_image" server)" "$server_image"
  ctr_import "$(build_dockerfile "$toolkit_image" toolkit)" "$toolkit_image"
  ctr_import "$(build_dockerfile "$router_image" router)" "$router_image"
}

# The node needs the pause image before any pod; cluster.sh calls this.
load_node_images() {
  ctr_import "$(pause_archive)" "$pause_image"
  ctr_import "$(coredns_archive)" "modelyard/coredns:$(readlink "$bin/coredns" | sed 's/.*coredns-//')"
  ctr_import "$(knp_archive)" "$(knp_image)"
}

# Sourced (by tests), it only defines its functions.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

# One build at a time on a machine (two worktrees share the cache and the builder's
# storage); a second run waits, then finds the archives the first one made.
exec {images_lock}>"$store/.build.lock"
flock "$images_lock"

case ${1:-all} in
  build) build ;;
  load) load ;;
  node) load_node_images ;;
  pin) pin ;;
  all) build && load ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
