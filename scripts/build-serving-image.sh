#!/usr/bin/env bash
# Build the stand-in TensorFlow Serving image from include/serving_image/.
# Idempotent: skips when an image with the same source hash (Dockerfile + the server package) exists,
# rebuilds when either file changed.
set -euo pipefail
IMAGE="${1:-tfserving-deploy/serving:2.21.0}"
BASE="${BASE:-tfserving-deploy/debian:bookworm}"
LABEL_KEY="tfserving-deploy.source-hash"
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../include/serving_image" && pwd)"
ca=/etc/ssl/certs/ca-certificates.crt

hash=$(cd "$src" && find Dockerfile tf_serving_server -name "*.py" -o -name Dockerfile | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
old_id=""
if current=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$IMAGE" 2>/dev/null); then
  if [ "$current" = "$hash" ]; then
    echo "==> serving image $IMAGE up to date ($hash)"; exit 0
  fi
  old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
  echo "==> serving image $IMAGE is stale (${current:-no hash} != $hash), rebuilding"
fi
docker image inspect "$BASE" >/dev/null 2>&1 \
  || { echo "error: base image $BASE missing (run scripts/build-base-image.sh)" >&2; exit 1; }
[ -r "$ca" ] || { echo "error: CA bundle $ca not readable" >&2; exit 1; }

ctx=$(mktemp -d /var/tmp/serving-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$src/Dockerfile" "$ctx/" && cp -r "$src/tf_serving_server" "$ctx/" && find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
cp "$ca" "$ctx/ca-certificates.crt"

echo "==> building $IMAGE from $BASE (cold build about 75-90 s)"
start=$SECONDS
docker build --build-arg BASE="$BASE" --label "$LABEL_KEY=$hash" -t "$IMAGE" "$ctx"
echo "==> built $IMAGE ($hash) in $((SECONDS - start)) s"
# Drop the stale image it replaced (ignored when a container still uses it).
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  docker rmi "$old_id" >/dev/null 2>&1 || true
fi
