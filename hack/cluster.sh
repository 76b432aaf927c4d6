#!/usr/bin/env bash
# A real local Kubernetes control plane from upstream binaries, started as plain
# processes the way kubernetes' hack/local-up-cluster.sh does: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler, TLS everywhere, Node+RBAC authorization,
# service-account token signing.
#
#   hack/cluster.sh up       build (first time) and start; harmless when already up
#                            NODE=1 adds a real node (hack/node/node.sh): containerd,
#                            CNI, kubelet, kube-proxy, CoreDNS, local volumes
#   hack/cluster.sh down     stop everything it started and wipe the etcd data
#   hack/cluster.sh env      shell exports: KUBECONFIG and PATH (kubectl, helm first)
#   hack/cluster.sh status   exit 0 when the API server answers /readyz
#   hack/cluster.sh restart-apiserver [SECONDS]
#                            stop kube-apiserver, keep it down SECONDS (default 0),
#                            start it again and wait for /readyz (a fault to test)
#
# Ports (APISERVER_PORT=6443, ETCD_PORT=2379, ETCD_PEER_PORT=2380,
# CONTROLLER_MANAGER_PORT=10257, SCHEDULER_PORT=10259) can be moved to run a second
# cluster beside the first.
# State lives in $CLUSTER_DIR (default: .cluster/ in the repository): pki/, logs/,
# run/ (pid files), etcd/ and kubeconfig (the admin kubeconfig).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
bin=$cache/bin
dir=${CLUSTER_DIR:-$root/.cluster}
pki=$dir/pki
logs=$dir/logs
run=$dir/run

api_port=${APISERVER_PORT:-6443}
etcd_port=${ETCD_PORT:-2379}
etcd_peer_port=${ETCD_PEER_PORT:-2380}
controller_manager_port=${CONTROLLER_MANAGER_PORT:-10257}
scheduler_port=${SCHEDULER_PORT:-10259}
service_cidr=${SERVICE_CIDR:-10.0.0.0/24}
cluster_cidr=${CLUSTER_CIDR:-10.88.0.0/16}
first_service_ip=${FIRST_SERVICE_IP:-10.0.0.1}
# Pods reach the API server through the `kubernetes` Service, whose endpoint is the
# advertise address: the host's own address, not loopback.
advertise=${ADVERTISE_ADDRESS:-$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="src") print $(i+1)}' | head -n1)}
advertise=${advertise:-127.0.0.1}
components=(etcd kube-apiserver kube-controller-manager kube-scheduler)
# shellcheck source=hack/node/node.sh
source "$root/hack/node/node.sh"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_alive() { [[ -f $run/$1.pid ]] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

readyz() {
  curl -sf --max-time 3 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------- certs
gen_key() { [[ -f $1 ]] || openssl genrsa -out "$1" 2048 2>/dev/null; }

# cert NAME CN ORG [SAN...]: a client/server certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 org=$3; shift 3
  [[ -f $pki/$name.crt ]] && return
  gen_key "$pki/$name.key"
  local subj="/CN=$cn" ext="$pki/$name.ext"
  [[ -n $org ]] && subj="/O=$org$subj"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    if (($#)); then
      local san="" s
      for s in "$@"; do
        if [[ $s =~ ^[0-9.]+$ ]]; then san+="IP:$s,"; else san+="DNS:$s,"; fi
      done
      echo "subjectAltName=${san%,}"
    fi
  } >"$ext"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$ext"
}

make_pki() {
  mkdir -p "$pki"
  chmod 700 "$pki"
  if [[ ! -f $pki/ca.crt ]]; then
    gen_key "$pki/ca.key"
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=modelyard-local-ca" -days 3650 \
      -sha256 -out "$pki/ca.crt" 2>/dev/null
  fi
  # If the host address changed since the serving cert was made, make a new one.
  if [[ -f $pki/apiserver.crt ]] && ! openssl x509 -in "$pki/apiserver.crt" -noout -text \
    | grep -q "IP Address:$advertise"; then
    rm -f "$pki/apiserver.crt"
  fi
  cert apiserver kube-apiserver "" kubernetes kubernetes.default kubernetes.default.svc \
    kubernetes.default.svc.cluster.local localhost 127.0.0.1 "$first_service_ip" "$advertise"
  cert etcd etcd "" localhost 127.0.0.1
  cert apiserver-etcd-client kube-apiserver-etcd-client ""
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  gen_key "$pki/sa.key"
  [[ -f $pki/sa.pub ]] || openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

# kubeconfig FILE CERTNAME: a kubeconfig that authenticates with pki/CERTNAME.{crt,key}.
kubeconfig() {
  local file=$1 name=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: modelyard-local
  cluster:
    certificate-authority: $pki/ca.crt
    server: https://127.0.0.1:$api_port
users:
- name: $name
  user:
    client-certificate: $pki/$name.crt
    client-key: $pki/$name.key
contexts:
- name: modelyard-local
  context: {cluster: modelyard-local, user: $name}
current-context: modelyard-local
EOF
}

# ------------------------------------------------------------------------ processes
start() { # start NAME ARGS...: run in its own session, log to logs/NAME.log
  local name=$1; shift
  if pid_alive "$name"; then return; fi
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}

tail_logs() {
  local c
  for c in "${components[@]}" "${node_components[@]}"; do
    [[ -f $logs/$c.log ]] || continue
    echo "----- last lines of $logs/$c.log" >&2
    tail -n 25 "$logs/$c.log" >&2
  done
}

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    local c
    for c in "${components[@]}" "${node_components[@]}"; do
      if [[ -f $run/$c.pid ]] && ! pid_alive "$c"; then
        tail_logs
        die "$c exited while waiting for $what (log: $logs/$c.log)"
      fi
    done
    if ((SECONDS > deadline)); then
      tail_logs
      die "timed out after ${limit}s waiting for $what"
    fi
    sleep 0.5
  done
}

etcd_healthy() {
  curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/apiserver-etcd-client.crt" \
    --key "$pki/apiserver-etcd-client.key" "https://127.0.0.1:$etcd_port/health" \
    | grep -q '"health":"true"'
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_apiserver() {
  start kube-apiserver "$bin/kube-apiserver" \
    --bind-address 0.0.0.0 --secure-port "$api_port" --advertise-address "$advertise" \
    --etcd-servers "https://127.0.0.1:$etcd_port" --etcd-cafile "$pki/ca.crt" \
    --etcd-certfile "$pki/apiserver-etcd-client.crt" \
    --etcd-keyfile "$pki/apiserver-etcd-client.key" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --api-audiences https://kubernetes.default.svc \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range "$service_cidr" \
    --allow-privileged=true \
    --requestheader-client-ca-file "$pki/ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --event-ttl 1h --v 1
}

up() {
  if readyz; then
    if [[ -n ${NODE:-} ]] && ! pid_alive kubelet; then
      "$root/hack/build-tools.sh" node
      node_up
    fi
    log "already up: KUBECONFIG=$dir/kubeconfig"
    return
  fi
  # What an interrupted run left (a pid file whose process is gone, its neighbours still
  # up) would make the waits below fail: stop all of it first.
  local c
  for c in "${components[@]}" "${node_components[@]}"; do
    if [[ -f $run/$c.pid ]] && ! pid_alive "$c"; then
      log "a previous run was interrupted ($c is gone): stopping what is left of it"
      down
      break
    fi
  done
  command -v openssl >/dev/null || die "openssl is needed to make the cluster certificates"
  command -v curl >/dev/null || die "curl is needed to check the API server"
  "$root/hack/build-tools.sh" ${NODE:+node}
  local t0=$SECONDS
  mkdir -p "$logs" "$run" "$dir/etcd"
  for p in "$api_port" "$etcd_port" "$etcd_peer_port" "$controller_manager_port" "$scheduler_port"; do
    if ! pid_alive etcd && ! pid_alive kube-apiserver && ! port_free "$p"; then
      die "port $p is in use by another program; stop it or set APISERVER_PORT/ETCD_PORT"
    fi
  done
  make_pki
  kubeconfig "$dir/kubeconfig" admin
  kubeconfig "$dir/controller-manager.kubeconfig" controller-manager
  kubeconfig "$dir/scheduler.kubeconfig" scheduler

  start etcd "$bin/etcd" --name modelyard --data-dir "$dir/etcd" \
    --listen-client-urls "https://127.0.0.1:$etcd_port" \
    --advertise-client-urls "https://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "modelyard=http://127.0.0.1:$etcd_peer_port" \
    --cert-file "$pki/etcd.crt" --key-file "$pki/etcd.key" \
    --client-cert-auth --trusted-ca-file "$pki/ca.crt" \
    --listen-metrics-urls "http://127.0.0.1:$((etcd_port + 2))" \
    --quota-backend-bytes 4294967296 --log-level warn
  wait_for etcd 30 etcd_healthy

  start_apiserver
  wait_for "kube-apiserver /readyz" 60 readyz

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$controller_manager_port" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials --controllers '*' --leader-elect=false \
    --allocate-node-cidrs --cluster-cidr "$cluster_cidr" \
    --service-cluster-ip-range "$service_cidr" --v 1

  cat >"$dir/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $dir/scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
  start kube-scheduler "$bin/kube-scheduler" --config "$dir/scheduler.yaml" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$scheduler_port" --v 1

  # The controllers must be running too, not only the API server: the default
  # ServiceAccount appears once the serviceaccount controller has run.
  wait_for "the controllers (default ServiceAccount)" 60 \
    "$bin/kubectl" --kubeconfig "$dir/kubeconfig" -n default get serviceaccount default
  wait_for kube-scheduler 30 curl -sfk --max-time 2 "https://127.0.0.1:$scheduler_port/healthz"
  if [[ -n ${NODE:-} ]]; then
    node_up
  fi
  log "up in $((SECONDS - t0))s: export KUBECONFIG=$dir/kubeconfig (or: eval \"\$(make -s cluster-env)\")"
}

stop_pid() { # stop_pid NAME: TERM the process group, then KILL after 10 s
  local name=$1 pid
  [[ -f $run/$name.pid ]] || return 0
  pid=$(cat "$run/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$run/$name.pid"
}

down() {
  local c i
  node_down
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    stop_pid "${components[$i]}"
  done
  # Anything of ours left behind (a pid file lost with a killed shell): match on our
  # own state directory, which only our processes have on their command line.
  for c in "${components[@]}" kubelet kube-proxy; do
    pkill -KILL -f "^$bin/$c .*$dir" 2>/dev/null || true
  done
  rm -rf "$dir/etcd" "$run"
  log "down"
}

# restart_apiserver [SECONDS]: stop kube-apiserver (TERM, then KILL), leave it down for
# SECONDS (default 0), start it again with the same flags and wait for /readyz. Everything
# else (etcd, the controllers, the node, the pods) runs on: the chaos suite's fault.
restart_apiserver() {
  local down_for=${1:-0}
  pid_alive kube-apiserver || die "kube-apiserver is not running (hack/cluster.sh up)"
  stop_pid kube-apiserver
  log "kube-apiserver stopped; starting it again in ${down_for}s"
  sleep "$down_for"
  start_apiserver
  wait_for "kube-apiserver /readyz" 120 readyz
  log "kube-apiserver is back"
}

env_exports() {
  printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig"
  printf 'export PATH=%q:"$PATH"\n' "$bin"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  env) env_exports ;;
  status) readyz ;;
  restart-apiserver) restart_apiserver "${2:-0}" ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
