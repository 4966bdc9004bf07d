#!/usr/bin/env bash
# Build the pinned Kubernetes components and etcd from the Go module proxy, once per pin.
# The wrapper module in cluster/k8s fixes every version; binaries land in a cache directory
# keyed by the wrapper's go.mod/go.sum and the Go version, outside the work tree.
# Prints the binary directory on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mod="$here/k8s"
k8s_version=$(awk '$1 == "k8s.io/kubernetes" || ($1 == "require" && $2 == "k8s.io/kubernetes") {print $NF; exit}' "$mod/go.mod")
key=$( { cat "$mod/go.mod" "$mod/go.sum" "$mod/tools.go"; go env GOVERSION; } | sha256sum | cut -c1-12)
bin="${TFSK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tfserving-deploy/cluster}/$k8s_version-$key/bin"
commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

if [ -x "$bin/etcd" ] && [ -x "$bin/pause" ] && for c in "${commands[@]}"; do [ -x "$bin/$c" ] || exit 1; done; then
  echo "$bin"; exit 0
fi

echo "==> building Kubernetes $k8s_version and etcd into $bin (cold: about 20-40 min on 2 cores)" >&2
start=$(date +%s)
mkdir -p "$bin.tmp"
cd "$mod"
major=${k8s_version#v}; minor=${major#*.}; minor=${minor%%.*}; major=${major%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
pkgs=()
for c in "${commands[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin.tmp/" "${pkgs[@]}"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" go.etcd.io/etcd/server/v3
# The sandbox ("pause") container: Kubernetes' own pause.c, built static (nothing can be pulled).
pause_src="$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
gcc -Os -Wall -Werror -static -DVERSION="$k8s_version" -o "$bin.tmp/pause" "$pause_src"
strip "$bin.tmp/pause"
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "==> built in $(( $(date +%s) - start )) s" >&2
echo "$bin"
