#!/usr/bin/env bash
# Prints the local storage of a one-node cluster: the default StorageClass "standard"
# (no provisioner, bound when the pod is scheduled, Retain) and COUNT local
# PersistentVolumes of 50Gi under DIR/local-pv-NN on the node that NODE_SELECTOR names.
# The built-in node (hack/node/node.sh) and the kind node image (hack/kind.sh image) both
# use it, so a chart's claims bind the same way on either.
#
#   hack/node/volumes.sh COUNT DIR KEY=VALUE     e.g. 12 /var/local-volumes kubernetes.io/os=linux
#
# The directories must exist and be world-writable: restricted pods run as non-root and
# fsGroup does not apply to local volumes.
set -euo pipefail
count=${1:?usage: volumes.sh COUNT DIR KEY=VALUE} dir=${2:?DIR} selector=${3:?KEY=VALUE}
key=${selector%%=*} value=${selector#*=}
cat <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
YAML
for i in $(seq -w 1 "$count"); do
  cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-pv-$i
  labels: {modelyard.io/local-volume: "true"}
spec:
  capacity: {storage: 50Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard
  local: {path: $dir/local-pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: $key, operator: In, values: [$value]}
YAML
done
