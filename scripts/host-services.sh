#!/usr/bin/env bash
# Install and start what the local target needs: a Docker engine and an OCI registry on 127.0.0.1.
# Idempotent: every step checks first and skips what is already done.
set -euo pipefail

REGISTRY_ADDR="${REGISTRY_ADDR:-127.0.0.1:5000}"
STATE_DIR="${STATE_DIR:-/var/lib/tfserving-deploy}"
here="$(cd "$(dirname "$0")" && pwd)"

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

wait_for() {  # wait_for <what> <seconds> <command...>: bounded poll
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "error: $what did not come up within ${secs}s" >&2; return 1
}

if ! docker info >/dev/null 2>&1; then
  echo "==> starting dockerd (log: /var/log/dockerd.log)"
  # Debian's containerd is started by dockerd itself when no system containerd runs.
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  wait_for "dockerd" 60 docker info || { tail -n 20 /var/log/dockerd.log >&2; exit 1; }
fi

if ! curl -fsS "http://${REGISTRY_ADDR}/v2/" >/dev/null 2>&1; then
  echo "==> starting docker-registry on ${REGISTRY_ADDR} (storage: ${STATE_DIR}/registry)"
  mkdir -p "${STATE_DIR}/registry"
  # Debian's default config wants htpasswd auth without a password file: use our own.
  sed -e "s|@ADDR@|${REGISTRY_ADDR}|" -e "s|@ROOT@|${STATE_DIR}/registry|" \
    "$here/registry-config.yml" >"${STATE_DIR}/registry-config.yml"
  nohup docker-registry serve "${STATE_DIR}/registry-config.yml" >/var/log/tfserving-registry.log 2>&1 &
  wait_for "registry at ${REGISTRY_ADDR}" 30 curl -fsS "http://${REGISTRY_ADDR}/v2/" \
    || { tail -n 20 /var/log/tfserving-registry.log >&2; exit 1; }
fi
echo "==> docker engine and registry ${REGISTRY_ADDR} are up"
