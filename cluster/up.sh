#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine, from public packages only (make cluster).
#
# Control plane and node binaries come from cluster/build.sh (Kubernetes + etcd, built from the Go
# module proxy); containerd, runc, the CNI plugins and iptables from Debian. The sandbox image is
# Kubernetes' own pause.c, built here and imported. Idempotent: what runs and answers is left
# alone, so a second run takes a second or two. Every wait is bounded.
set -euo pipefail
source "$(dirname "$0")/env.sh"
started=$SECONDS
[ "$(id -u)" = 0 ] || { echo "error: the cluster needs root (network devices, iptables, containerd)" >&2; exit 1; }

# -- packages ------------------------------------------------------------------------------------
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v openssl >/dev/null || need+=(openssl)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# -- binaries ------------------------------------------------------------------------------------
bin=$(bash "$CLUSTER_ROOT/cluster/build.sh")
mkdir -p "$STATE/logs" "$STATE/etc" "$RUN_DIR"
ln -sfn "$bin" "$STATE/bin"
if [ -e "$RUN_DIR/state" ] && [ "$(cat "$RUN_DIR/state")" != "$STATE" ] && pid_of kube-apiserver >/dev/null; then
  echo "error: a cluster from $(cat "$RUN_DIR/state") already runs on this machine; run make cluster-down there first" >&2
  exit 1
fi
echo "$STATE" > "$RUN_DIR/state"

# -- network: a node device for the node and the cluster's ranges, a bridge for the pods -------
ip link show "$NODE_DEV" >/dev/null 2>&1 || ip link add "$NODE_DEV" type bridge  # a bridge without ports: this kernel has no dummy driver
ip addr replace "$NODE_IP/32" dev "$NODE_DEV"
ip link set "$NODE_DEV" up
ip route replace "$CLUSTER_NET" dev "$NODE_DEV"   # services and load balancers: DNATed, else dropped here
ip link show "$BRIDGE_DEV" >/dev/null 2>&1 || ip link add "$BRIDGE_DEV" type bridge
ip addr replace "$POD_GATEWAY/${POD_CIDR#*/}" dev "$BRIDGE_DEV"
ip link set "$BRIDGE_DEV" up
sysctl -qw net.ipv4.ip_forward=1
[ -e /proc/sys/net/bridge ] || modprobe br_netfilter
sysctl -qw net.bridge.bridge-nf-call-iptables=1
# Forwarding: anything to the cluster (from this host's other bridges too) and replies from it;
# pods may not open connections beyond the cluster (Docker's FORWARD policy is DROP anyway).
if ! iptables -S "$FORWARD_CHAIN" >/dev/null 2>&1; then
  iptables -N "$FORWARD_CHAIN"
  iptables -A "$FORWARD_CHAIN" -d "$CLUSTER_NET" -j ACCEPT
  iptables -A "$FORWARD_CHAIN" -s "$CLUSTER_NET" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  iptables -A "$FORWARD_CHAIN" -s "$CLUSTER_NET" -j REJECT
fi
iptables -C FORWARD -j "$FORWARD_CHAIN" 2>/dev/null || iptables -I FORWARD 1 -j "$FORWARD_CHAIN"

# -- certificates and credentials ----------------------------------------------------------------
pki="$STATE/pki"
bash "$CLUSTER_ROOT/cluster/pki.sh" "$pki"

changed=()  # components whose configuration changed: restarted below if they run
install() {  # install <component> <file>: move <file>.new over <file> if different
  if cmp -s "$2.new" "$2"; then rm -f "$2.new"; else mv "$2.new" "$2"; changed+=("$1"); fi
}
kubeconfig() {  # kubeconfig <component> <file> <cert name>: a self-contained kubeconfig for that identity
  cat >"$2.new" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: tfserving-deploy
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(base64 -w0 "$pki/$3.crt")
    client-key-data: $(base64 -w0 "$pki/$3.key")
contexts:
- name: tfserving-deploy
  context: {cluster: tfserving-deploy, user: $3}
current-context: tfserving-deploy
YAML
  chmod 600 "$2.new"
  install "$1" "$2"
}
kubeconfig kube-controller-manager "$STATE/etc/controller-manager.kubeconfig" controller-manager
kubeconfig kube-scheduler "$STATE/etc/scheduler.kubeconfig" scheduler
kubeconfig kubelet "$STATE/etc/kubelet.kubeconfig" kubelet
kubeconfig kube-proxy "$STATE/etc/kube-proxy.kubeconfig" kube-proxy
kubeconfig lb-controller "$STATE/etc/lb-controller.kubeconfig" lb-controller
kubeconfig admin "$STATE/kubeconfig" admin
export KUBECONFIG="$STATE/kubeconfig"
kubectl="$bin/kubectl"

# -- configuration files -------------------------------------------------------------------------
render() {  # render <component> <template> <destination>: fill in the @NAME@ placeholders
  sed -e "s|@STATE@|$STATE|g" -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" \
    -e "s|@CONTAINERD_SOCK@|$CONTAINERD_SOCK|g" -e "s|@BRIDGE_DEV@|$BRIDGE_DEV|g" -e "s|@POD_CIDR@|$POD_CIDR|g" \
    -e "s|@POD_GATEWAY@|$POD_GATEWAY|g" -e "s|@NODE_IP@|$NODE_IP|g" -e "s|@NODE_NAME@|$NODE_NAME|g" \
    "$CLUSTER_ROOT/cluster/config/$2" >"$3.new"
  install "$1" "$3"
}
mkdir -p "$STATE/etc/certs.d/127.0.0.1:5000" "$STATE/etc/cni"
render containerd containerd.toml "$STATE/etc/containerd.toml"
render containerd registry-hosts.toml "$STATE/etc/certs.d/127.0.0.1:5000/hosts.toml"
render containerd cni.conflist "$STATE/etc/cni/10-tfserving-deploy.conflist"
render kubelet kubelet.yaml "$STATE/etc/kubelet.yaml"
render kube-proxy kube-proxy.yaml "$STATE/etc/kube-proxy.yaml"

start() {  # start <component> <command...>: in its own session, unless it runs with this configuration
  local name=$1 pid; shift
  if pid=$(pid_of "$name"); then
    if [[ " ${changed[*]} " != *" $name "* ]] && [ "$*" = "$(cat "$RUN_DIR/$name.cmd" 2>/dev/null)" ]; then
      return 0
    fi
    echo "==> restarting $name: its configuration changed"
    stop "$name"
  fi
  echo "==> starting $name (log: $STATE/logs/$name.log)"
  setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  echo "$*" >"$RUN_DIR/$name.cmd"
}
explain() {  # explain <component>: the end of its log, after a failed wait
  echo "--- last lines of $STATE/logs/$1.log:" >&2; tail -n 25 "$STATE/logs/$1.log" >&2 || true; exit 1
}

# -- control plane -------------------------------------------------------------------------------
# etcd: a throwaway test store on loopback; no fsync (the data is disposable, the disk shared).
start etcd "$bin/etcd" --name tfsk --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster tfsk=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --log-level warn
wait_for etcd 60 curl -fsS http://127.0.0.1:2379/health || explain etcd

start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --token-auth-file="$pki/tokens.csv" \
  --audit-policy-file="$CLUSTER_ROOT/cluster/config/audit-policy.yaml" --audit-log-path="$STATE/logs/audit.log" \
  --audit-log-maxsize=200 --audit-log-maxbackup=1 \
  --profiling=false --v=0
wait_for kube-apiserver 120 curl -fsS --cacert "$pki/ca.crt" "$API_URL/readyz" || explain kube-apiserver
"$kubectl" apply --server-side --force-conflicts -f "$CLUSTER_ROOT/cluster/config/bootstrap.yaml" >/dev/null

start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$STATE/etc/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$STATE/etc/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$STATE/etc/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" \
  --node-cidr-mask-size="${POD_CIDR#*/}" --profiling=false --v=0
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$STATE/etc/scheduler.kubeconfig" \
  --authentication-kubeconfig="$STATE/etc/scheduler.kubeconfig" \
  --authorization-kubeconfig="$STATE/etc/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=0

# -- node ----------------------------------------------------------------------------------------
start containerd containerd --config "$STATE/etc/containerd.toml"
wait_for containerd 60 ctr --address "$CONTAINERD_SOCK" version || explain containerd
if ! ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qxF "$PAUSE_IMAGE"; then
  echo "==> importing the sandbox image $PAUSE_IMAGE (pause.c, built here)"
  python3 "$CLUSTER_ROOT/cluster/pause_image.py" "$bin/pause" "$PAUSE_IMAGE" "$STATE/pause.tar"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$STATE/pause.tar" >/dev/null
fi

start kubelet "$bin/kubelet" --config="$STATE/etc/kubelet.yaml" --kubeconfig="$STATE/etc/kubelet.kubeconfig" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$STATE/kubelet" --v=0
start kube-proxy "$bin/kube-proxy" --config="$STATE/etc/kube-proxy.yaml" --v=0

python="$CLUSTER_ROOT/.venv/bin/python"
[ -x "$python" ] || { echo "error: $python is missing; run make venv first" >&2; exit 1; }
cp "$CLUSTER_ROOT/cluster/loadbalancer.py" "$STATE/etc/loadbalancer.py.new"
install lb-controller "$STATE/etc/loadbalancer.py"  # a changed controller is restarted
start lb-controller "$python" "$STATE/etc/loadbalancer.py" \
  --kubeconfig "$STATE/etc/lb-controller.kubeconfig" --pool "$LB_POOL"

node_ready() {
  [ "$("$kubectl" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for "node $NODE_NAME" 120 node_ready || explain kubelet
wait_for kube-proxy 60 curl -fsS http://127.0.0.1:10256/healthz || explain kube-proxy
wait_for "the default service account" 60 "$kubectl" -n default get serviceaccount default || explain kube-controller-manager
for component in "${COMPONENTS[@]}"; do
  pid_of "$component" >/dev/null || explain "$component"
done
echo "==> cluster up in $((SECONDS - started)) s: Kubernetes $("$kubectl" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') at $API_URL"
echo "    kubeconfig: $STATE/kubeconfig   kubectl: $STATE/bin/kubectl   LoadBalancer pool: $LB_POOL"
