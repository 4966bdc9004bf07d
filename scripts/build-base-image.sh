#!/usr/bin/env bash
# Build the local Debian base image with debootstrap + docker import (no Docker Hub here).
# Skips the work when the image already exists.
set -euo pipefail
IMAGE="${1:-tfserving-deploy/debian:bookworm}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "==> base image $IMAGE present"; exit 0
fi
# Use the mirror this machine's apt already uses.
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { echo "error: no Debian mirror found in apt sources" >&2; exit 1; }
root=$(mktemp -d /var/tmp/debootstrap.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "==> debootstrap bookworm from $mirror (about 30 s)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/var/log/tfserving-debootstrap.log 2>&1 \
  || { tail -n 20 /var/log/tfserving-debootstrap.log >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
echo "==> built $IMAGE"
