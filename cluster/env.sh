# Shared settings of the local cluster (sourced by up.sh and down.sh).
# Every address lives in 10.200.0.0/16, routed to a device of the project's own, so
# nothing for the cluster's ranges can leave through the machine's default route.
CLUSTER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TFSK_STATE:-$CLUSTER_ROOT/.cluster}"   # kubeconfig, bin, pki, data, logs: removed by down.sh
RUN_DIR=/run/tfserving-deploy-cluster            # sockets (short paths) and pid files
NODE_NAME=tfserving-node
CLUSTER_NET=10.200.0.0/16      # all of the cluster's addresses; routed to the node device
NODE_IP=10.200.0.1             # the node and the API server, on the node device
POD_CIDR=10.200.1.0/24         # pods, on the bridge
POD_GATEWAY=10.200.1.1
SERVICE_CIDR=10.200.16.0/20    # ClusterIPs (kube-proxy DNATs them)
API_SERVICE_IP=10.200.16.1
LB_POOL=10.200.64.0/24         # LoadBalancer ingress addresses (cluster/loadbalancer.py)
NODE_DEV=tfsk0                 # a port-less bridge that holds the node IP and the cluster routes
BRIDGE_DEV=tfsk-br0
FORWARD_CHAIN=TFSK-FORWARD
API_PORT=6443
API_URL="https://$NODE_IP:$API_PORT"
CONTAINERD_SOCK="$RUN_DIR/containerd.sock"
PAUSE_IMAGE=tfserving-deploy.local/pause:3.10
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy lb-controller)

pid_of() {  # pid_of <component>: the pid if that component runs, from its pid file
  local pid
  pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

wait_for() {  # wait_for <what> <seconds> <command...>: bounded poll, 0.2 s apart
  local what=$1 secs=$2 end=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "error: $what not ready within ${secs}s" >&2; return 1; fi
    sleep 0.2
  done
}

stop() {  # stop <component>: TERM, then KILL after 10 s
  local pid
  pid=$(pid_of "$1") || { rm -f "$RUN_DIR/$1.pid"; return 0; }
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN_DIR/$1.pid"
}
