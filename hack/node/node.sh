# The node of the local cluster (NODE=1): containerd with its own config, CNI (bridge,
# host-local, portmap, loopback), kubelet, kube-proxy, CoreDNS and local
# PersistentVolumes. Sourced by hack/cluster.sh, which defines the variables and the
# helpers used here (start, stop_pid, pid_alive, wait_for, cert, kubeconfig, log, die).

dns_ip=${DNS_IP:-10.0.0.10}
node_name=${NODE_NAME:-modelyard-node}
pod_subnet=${POD_SUBNET:-10.88.0.0/24}
bridge_name=${BRIDGE_NAME:-modelyard0}
# The CNI network's name: the bridge plugin writes it into the comment of each rule it adds.
cni_network=${CNI_NETWORK:-modelyard}
volumes=${NODE_VOLUMES:-12}
node_components=(containerd kubelet kube-proxy)
# containerd's state and socket live on tmpfs, in a directory of this cluster's own
# (unix socket paths are limited to 108 bytes, so not under a deep checkout).
run_state=/run/modelyard-$(printf '%s' "$dir" | sha256sum | cut -c1-8)
containerd_sock=$run_state/containerd/containerd.sock

kubectl_() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
crictl_() { "$bin/crictl" --runtime-endpoint "unix://$containerd_sock" --timeout 30s "$@"; }

node_certs() {
  cert kubelet "system:node:$node_name" system:nodes "$node_name" localhost 127.0.0.1 \
    "$advertise"
  cert kube-proxy system:kube-proxy ""
}

node_prereqs() {
  local missing=() c
  for c in containerd runc ctr iptables iptables-save iptables-restore conntrack buildah gcc; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  [[ -x /usr/lib/cni/bridge ]] || missing+=("containernetworking-plugins")
  ((${#missing[@]} == 0)) || die "the node needs: ${missing[*]} (Debian packages: containerd
    runc containernetworking-plugins iptables conntrack buildah debootstrap gcc libc6-dev)"
  [[ $(id -u) == 0 ]] || die "the node (kubelet, containerd) must run as root"
}

node_sysctls() {
  # Remember what we change, to put it back on down.
  [[ -f $run/sysctl.ip_forward ]] || cat /proc/sys/net/ipv4/ip_forward >"$run/sysctl.ip_forward"
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null || true
  [[ -f $run/sysctl.bridge_nf ]] ||
    cat /proc/sys/net/bridge/bridge-nf-call-iptables >"$run/sysctl.bridge_nf"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
}

node_config() {
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$run_state/containerd" "$dir/kubelet"
  cat >"$dir/containerd/config.toml" <<EOF
# containerd for the modelyard node: its own root, state and socket, not the system's.
# The root (images) is kept in the cache across cluster restarts.
version = 2
root = "$cache/containerd/root"
state = "$run_state/containerd/state"
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.grpc.v1.cri"]
  # Built locally (hack/images/pause): nothing can be pulled.
  sandbox_image = "${PAUSE_IMAGE:-registry.k8s.io/pause:3.10}"
  # Root here lacks CAP_SYS_RESOURCE: lowering oom_score_adj (-998 for sandboxes) is
  # denied, so keep scores at or above our own instead of failing every pod.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  cat >"$dir/cni/net.d/10-modelyard.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$cni_network",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge_name",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_subnet"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$run_state/cni"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  printf '%s\n' "$containerd_sock" >"$dir/containerd/address"
  kubeconfig "$dir/kubelet.kubeconfig" kubelet
  kubeconfig "$dir/kube-proxy.kubeconfig" kube-proxy
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
containerRuntimeEndpoint: unix://$containerd_sock
# This machine is cgroup v1; from Kubernetes 1.35 on this also needs failCgroupV1: false.
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: [$dns_ip]
clusterDomain: cluster.local
podCIDR: $pod_subnet
resolvConf: /etc/resolv.conf
# Imported images can never be pulled again: no image garbage collection.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2%
  imagefs.available: 2%
maxPods: 60
readOnlyPort: 0
# See restrict_oom_score_adj in the containerd config.
oomScoreAdj: 0
EOF
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $cluster_cidr
hostnameOverride: $node_name
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack table size alone; no negative OOM score (not permitted).
conntrack: {maxPerCore: 0}
oomScoreAdj: 0
EOF
}

node_ready() {
  kubectl_ get node "$node_name" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True
}

knp_ready() {
  kubectl_ -n kube-system get ds kube-network-policies -o jsonpath='{.status.numberReady}' \
    2>/dev/null | grep -q '^[1-9]' &&
    # ...and it answers its queue: a policy nothing enforces must never pass as enforced.
    awk '$1 == 98 && $2 > 0 { found = 1 } END { exit !found }' \
      /proc/net/netfilter/nfnetlink_queue 2>/dev/null
}

# New connections between pods go to kube-network-policies' queue (98). It programs
# nftables "queue" rules itself, but kernels built without CONFIG_NFT_QUEUE (like this
# machine's) refuse them; iptables' NFQUEUE target does the same. The host's own traffic
# to pods (the kubelet's probes, as root) is not queued, as upstream does. With
# --queue-bypass, connections pass while nothing listens (the controller restarting).
# The comment carries the CNI network's name, so iptables_cleanup removes the rules.
knp_queue_rules() {
  local comment="name: \"$cni_network\" network policy queue"
  iptables -t mangle -C POSTROUTING -m comment --comment "$comment" -m owner --uid-owner 0 \
    -j RETURN 2>/dev/null && return 0
  iptables -t mangle -A POSTROUTING -m comment --comment "$comment" -m owner --uid-owner 0 \
    -j RETURN
  iptables -t mangle -A POSTROUTING -m comment --comment "$comment" -d "$cluster_cidr" \
    -m conntrack --ctstate NEW -j NFQUEUE --queue-num 98 --queue-bypass
}

# The pods' traffic through the host's FORWARD chain is accepted by rules of the node's
# own, so a FORWARD policy of DROP (set by a Docker engine that turned forwarding on
# itself) does not cut the pods off. Appended: they decide only what nothing else did.
forward_rules() {
  local comment="name: \"$cni_network\" forward" flag
  for flag in -s -d; do
    iptables -C FORWARD "$flag" "$cluster_cidr" -m comment --comment "$comment" -j ACCEPT \
      2>/dev/null || iptables -A FORWARD "$flag" "$cluster_cidr" -m comment --comment "$comment" -j ACCEPT
  done
}

coredns_ready() {
  kubectl_ -n kube-system get deploy coredns -o jsonpath='{.status.availableReplicas}' \
    2>/dev/null | grep -q '^[1-9]'
}

# Local PersistentVolumes for a no-provisioner default StorageClass (hack/node/volumes.sh,
# shared with the kind node image): a PVC of the default class binds to one when its pod
# is scheduled.
node_volumes() {
  local i
  for i in $(seq -w 1 "$volumes"); do
    mkdir -p "$dir/volumes/local-pv-$i"
    chmod 0777 "$dir/volumes/local-pv-$i"
  done
  "$root/hack/node/volumes.sh" "$volumes" "$dir/volumes" "kubernetes.io/hostname=$node_name" |
    kubectl_ apply -f - >/dev/null
}

node_up() {
  node_prereqs
  local t0=$SECONDS
  mkdir -p "$run" "$logs"
  # down undoes the node's host changes (iptables, sysctls, bridge) only if it ran.
  touch "$run/node"
  node_certs
  node_sysctls
  forward_rules
  node_config
  start containerd containerd --config "$dir/containerd/config.toml"
  wait_for containerd 30 ctr -a "$containerd_sock" version
  # The sandbox (pause) and CoreDNS images must be in containerd before any pod.
  CLUSTER_DIR=$dir "$root/hack/images.sh" node
  start kubelet "$bin/kubelet" --config "$dir/kubelet.yaml" \
    --kubeconfig "$dir/kubelet.kubeconfig" --hostname-override "$node_name" \
    --node-ip "$advertise" --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" --v 1
  start kube-proxy "$bin/kube-proxy" --config "$dir/kube-proxy.yaml" --v 1
  wait_for "node $node_name Ready" 120 node_ready
  local coredns_v
  coredns_v=$(readlink "$bin/coredns" | sed 's/.*coredns-//')
  sed -e "s|@COREDNS_IMAGE@|modelyard/coredns:$coredns_v|" -e "s|@DNS_IP@|$dns_ip|" \
    "$root/hack/node/coredns.yaml" | kubectl_ apply -f - >/dev/null
  node_volumes
  local knp_v
  knp_v=$(readlink "$bin/kube-network-policies" | sed 's/.*kube-network-policies-//')
  sed -e "s|@KNP_IMAGE@|modelyard/kube-network-policies:$knp_v|" \
    "$root/hack/node/kube-network-policies.yaml" | kubectl_ apply -f - >/dev/null
  knp_queue_rules
  wait_for "CoreDNS" 120 coredns_ready
  wait_for "kube-network-policies" 120 knp_ready
  log "node $node_name ready in $((SECONDS - t0))s"
}

# Remove the rules this node made and nothing else: kube-proxy's through kube-proxy itself
# (--cleanup), the kubelet's few chains by name, and the CNI rules of this node's own
# network (the bridge plugin comments each with the network's name, "modelyard") with
# the per-sandbox chains they jump to. Other runtimes' rules (Docker, another cluster's
# CNI, the host's own) are left as they are.
iptables_cleanup() {
  if [[ -x $bin/kube-proxy ]]; then
    "$bin/kube-proxy" --cleanup --v 0 >/dev/null 2>&1 || true
  fi
  # As iptables-save prints the bridge plugin's comments: name: \"modelyard\" id: \"...\"
  local marker="name: \\\"$cni_network\\\""
  local kubelet_chains="KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT KUBE-FIREWALL"
  local save restore rules chains filtered
  for save in iptables-save ip6tables-save; do
    command -v "$save" >/dev/null || continue
    restore=${save/-save/-restore}
    rules=$("$save" 2>/dev/null) || continue
    chains=$(grep -F -- "$marker" <<<"$rules" | grep -oE -- '-j CNI-[0-9a-f]+' \
      | awk '{print $2}' | sort -u | tr '\n' ' ' || true)
    # The marker goes through the environment: awk -v would unescape its backslashes.
    filtered=$(MARKER=$marker awk -v names="$chains $kubelet_chains" '
      BEGIN { n = split(names, list, " "); for (i = 1; i <= n; i++) drop[list[i]] = 1 }
      index($0, ENVIRON["MARKER"]) { next }
      /^:/ { if (substr($1, 2) in drop) next }
      /^-A / {
        if ($2 in drop) next
        for (i = 3; i < NF; i++) if ($i == "-j" && ($(i + 1) in drop)) next
      }
      { print }' <<<"$rules")
    if [[ $filtered != "$rules" ]]; then
      "$restore" <<<"$filtered"
    fi
  done
}

node_down() {
  [[ -f $run/node ]] || return 0
  stop_pid kube-proxy
  stop_pid kubelet
  if pid_alive containerd && [[ -x $bin/crictl ]]; then
    # Stopping the sandboxes through the CRI lets CNI remove their veths, network
    # namespaces and port mappings.
    local pods pod
    pods=$(crictl_ pods -q 2>/dev/null || true)
    # The network namespaces of our own sandboxes, to remove any CNI left behind.
    for pod in $pods; do
      crictl_ inspectp "$pod" 2>/dev/null | grep -oE '/var/run/netns/cni-[0-9a-f-]+' \
        | head -n1 >>"$run/netns" || true
    done
    if [[ -n $pods ]]; then
      # shellcheck disable=SC2086
      crictl_ stopp $pods >/dev/null 2>&1 || true
      # shellcheck disable=SC2086
      crictl_ rmp -f $pods >/dev/null 2>&1 || true
    fi
  fi
  stop_pid containerd
  # Shims outlive containerd; they are ours when they name our socket.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $containerd_sock" 2>/dev/null || true
  local m
  for m in $(awk '{print $2}' /proc/mounts | grep -E "^($dir|$run_state|$cache/containerd)/" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  ip link del "$bridge_name" 2>/dev/null || true
  local ns
  for ns in $(sort -u "$run/netns" 2>/dev/null); do
    # Only our sandboxes' namespaces, and only once no process is left in them.
    ns=$(basename "$ns")
    if ip netns list 2>/dev/null | grep -qw "$ns" && [[ -z $(ip netns pids "$ns" 2>/dev/null) ]]; then
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  rm -f "$run/netns"
  iptables_cleanup
  if [[ -f $run/sysctl.ip_forward ]]; then
    cat "$run/sysctl.ip_forward" >/proc/sys/net/ipv4/ip_forward
  fi
  if [[ -f $run/sysctl.bridge_nf ]]; then
    cat "$run/sysctl.bridge_nf" >/proc/sys/net/bridge/bridge-nf-call-iptables
  fi
  rm -rf "$run_state" "$dir/kubelet" "$dir/volumes"
}
