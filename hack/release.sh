#!/usr/bin/env bash
# Publishes a release: the three images and the chart, to an OCI registry.
#
#   hack/release.sh REGISTRY          e.g. ghcr.io/modelyard (what the release workflow
#                                     does on a tag), or localhost:5000 (a local registry)
#
# Pushes, for the version in src/modelyard/_version.py:
#   REGISTRY/modelyard/{operator,server,toolkit,router}:VERSION (amd64; the release workflow
#                                                          builds amd64 and arm64)
#   oci://REGISTRY/charts/modelyard, version VERSION, whose default image.registry is
#   REGISTRY: `helm install modelyard oci://REGISTRY/charts/modelyard --version VERSION`
#   pulls everything from there.
# and writes .release/VERSION/: the chart package and digests.txt (each image's
# reference@digest). RELEASE_SKIP_IMAGES=1: the chart only. A registry on localhost (or RELEASE_PLAIN_HTTP=1) is spoken to over
# plain HTTP; any other needs TLS and a login (`buildah login`, `helm registry login`).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
helm=$cache/bin/helm
registry=${1:-}
[[ -n $registry ]] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
registry=${registry%/}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/src/modelyard/_version.py")
out=$root/.release/$version
log() { printf '[release] %s\n' "$*" >&2; }

plain=${RELEASE_PLAIN_HTTP:-}
if [[ -z $plain ]]; then
  case $registry in localhost:* | localhost/* | localhost | 127.0.0.1*) plain=1 ;; *) plain=0 ;; esac
fi
tls=(--tls-verify=true)
helm_http=()
if [[ $plain == 1 ]]; then
  tls=(--tls-verify=false)
  helm_http=(--plain-http)
fi

mkdir -p "$out"
: >"$out/digests.txt"
components=(operator server toolkit router)
# RELEASE_SKIP_IMAGES=1: the chart only (the release workflow builds the images for two
# architectures with buildx).
if [[ ${RELEASE_SKIP_IMAGES:-0} == 1 ]]; then
  components=()
else
  log "building the images (cached when unchanged)"
  "$root/hack/images.sh" build
  source "$root/hack/images.sh" # its functions: build_dockerfile, archive_of, ...
fi
for component in "${components[@]}"; do
  archive=$(build_dockerfile "modelyard/$component:$version" "$component" 2>/dev/null)
  target=$registry/modelyard/$component:$version
  log "pushing $target"
  if [[ $builder == docker ]]; then
    docker load -i "$archive" >/dev/null
    docker tag "modelyard/$component:$version" "$target"
    docker push "$target" >/dev/null
    digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$target" | sed 's/.*@//')
  else
    # The archive is what was built (or cached): into buildah's storage, then out.
    image_id=$(buildah pull --quiet "oci-archive:$archive")
    buildah push --quiet "${tls[@]}" --digestfile "$out/$component.digest" \
      "$image_id" "docker://$target" >&2
    digest=$(cat "$out/$component.digest")
    rm -f "$out/$component.digest"
  fi
  printf '%s@%s\n' "$target" "$digest" >>"$out/digests.txt"
done

log "packaging the chart with image.registry=$registry"
"$root/hack/build-tools.sh" cli >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/charts/modelyard" "$work/modelyard"
# The published chart's default images are the published ones.
sed -i "s|^  registry: .*|  registry: $registry|" "$work/modelyard/values.yaml"
grep -q "^  registry: $registry\$" "$work/modelyard/values.yaml" || {
  log "ERROR: could not set image.registry in the chart's values.yaml"
  exit 1
}
"$helm" package "$work/modelyard" --version "$version" --app-version "$version" \
  --destination "$out" >/dev/null
"$helm" push "$out/modelyard-$version.tgz" "oci://$registry/charts" "${helm_http[@]}" >&2
log "released $version to $registry:"
cat "$out/digests.txt" >&2
log "chart: oci://$registry/charts/modelyard --version $version"
