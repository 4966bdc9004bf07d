#!/usr/bin/env bash
# The cluster's certificates and credentials, generated once: pki.sh <dir>.
# One CA signs everything; client certificates carry the identity (CN = user, O = group) that
# RBAC sees. EC P-256 keys: quick to make, accepted by every component.
set -euo pipefail
source "$(dirname "$0")/env.sh"
pki=$1
[ -s "$pki/tokens.csv" ] && exit 0
mkdir -p "$pki.tmp" && cd "$pki.tmp"
umask 077

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null; }
openssl_conf() {  # openssl_conf <usage> [sans]
  printf '[req]\ndistinguished_name=dn\n[dn]\n[ext]\nbasicConstraints=critical,CA:FALSE\n'
  printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$1"
  [ -n "${2:-}" ] && printf 'subjectAltName=%s\n' "$2"
  return 0
}
cert() {  # cert <name> <subject> <usage> [sans]
  key "$1"
  openssl_conf "$3" "${4:-}" >"$1.cnf"
  openssl req -new -key "$1.key" -subj "$2" -config "$1.cnf" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$1.cnf" -extensions ext -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.cnf"
}

key ca
openssl req -x509 -new -key ca.key -subj "/CN=tfserving-deploy local cluster CA" -days 3650 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
cert apiserver "/CN=kube-apiserver" serverAuth \
  "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert admin "/O=system:masters/CN=tfserving-deploy-admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
cert kube-proxy "/CN=system:kube-proxy" clientAuth
cert lb-controller "/CN=tfserving-deploy:lb-controller" clientAuth
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
# The bearer token a faked Google identity presents (the gke target's tests): the API server
# accepts it for this user, bound to cluster-admin in bootstrap.yaml as roles/container.admin is.
token=$(openssl rand -hex 24)
echo "$token" >gke-token
echo "$token,deployer@tfserving-deploy.iam.gserviceaccount.com,gke-deployer,tfserving-deploy:gke" >tokens.csv
rm -f ca.srl
cd .. && rm -rf "$pki" && mv "$pki.tmp" "$pki"
