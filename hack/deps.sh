#!/usr/bin/env bash
# Installs the Debian packages the cluster, the images and the tests use, when missing.
# Used by .ci/run and make demo; a no-op when everything is there.
set -euo pipefail
# openssl/curl: cluster certificates and health checks; iproute2/procps: addresses and
# processes; postgresql: ingestion tests start their own server; containerd, runc, CNI
# plugins, iptables, conntrack: the node; buildah, debootstrap, gcc/libc6-dev: images
# (static pause binary); lua5.4: the Argo CD health check's tests; chromium and a font:
# the model server's OpenAPI page in a real browser; docker-registry (the CNCF
# distribution registry): `make release` and the e2e install from a registry; nginx and
# prometheus: the canary router in front of real servers and the analysis's PromQL
# against a real Prometheus.
pkgs=(openssl curl iproute2 procps postgresql containerd runc containernetworking-plugins
  iptables conntrack buildah debootstrap gcc libc6-dev lua5.4 chromium fonts-dejavu-core
  docker-registry nginx prometheus)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "[deps] missing Debian packages: ${missing[*]} (install them as root)" >&2
  exit 1
fi
echo "[deps] installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
