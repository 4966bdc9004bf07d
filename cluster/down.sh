#!/usr/bin/env bash
# Stop the local cluster and remove its state, network devices and iptables rules (make cluster-down).
# The built binaries stay in their cache. Safe to run when nothing (or only part) runs.
set -uo pipefail
source "$(dirname "$0")/env.sh"
[ -e "$RUN_DIR/state" ] && STATE=$(cat "$RUN_DIR/state")

echo "==> stopping the cluster (state: $STATE)"
for component in lb-controller kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop "$component"
done
# Pods: kill every container, then containerd and its shims.
if [ -S "$CONTAINERD_SOCK" ] && pid_of containerd >/dev/null; then
  for task in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1
  done
fi
stop containerd
pkill -9 -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null

# Mounts under the state and run directories (pod volumes, container root filesystems, sandbox
# /dev/shm) and pod netns.
for dir in "$STATE" "$RUN_DIR"; do
  [ -d "$dir" ] || continue
  findmnt -rn -o TARGET | grep -F "$dir/" | sort -r | while read -r mount; do umount -l "$mount"; done
done
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do
  ip netns pids "$ns" 2>/dev/null | grep -q . || ip netns delete "$ns"
done

# Network: kube-proxy's rules, our forward chain, the pod bridge and the node device.
[ -x "$STATE/bin/kube-proxy" ] && "$STATE/bin/kube-proxy" --cleanup >/dev/null 2>&1
if command -v iptables >/dev/null; then
  while iptables -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null; do :; done
  iptables -F "$FORWARD_CHAIN" 2>/dev/null && iptables -X "$FORWARD_CHAIN" 2>/dev/null
fi
ip link delete "$BRIDGE_DEV" 2>/dev/null
ip link delete "$NODE_DEV" 2>/dev/null

rm -rf "$STATE" "$RUN_DIR"
echo "==> cluster removed"
