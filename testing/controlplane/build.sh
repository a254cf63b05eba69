#!/usr/bin/env bash
# Builds the real control plane for tests/kube from the source modules pinned in go.mod:
# kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes), etcd
# (go.etcd.io/etcd/server/v3) and helm (helm.sh/helm/v3). The binaries land in a cache directory
# keyed by the pinned versions, the Go version and go.sum, and are reused when already there, so
# only the first run on a machine pays for the build.
#
#   testing/controlplane/build.sh          build if needed; prints the bin directory last
#   ROOMSHARD_CONTROLPLANE_CACHE=DIR ...   cache root (default ~/.cache/roomshard/controlplane)
set -euo pipefail
cd "$(dirname "$0")"

version_of() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' go.mod; }
kube_version=$(version_of k8s.io/kubernetes)
etcd_version=$(awk '/go.etcd.io\/etcd\/server\/v3 v/ { print $NF; exit }' go.mod)
helm_version=$(version_of helm.sh/helm/v3)
go_version=$(go env GOVERSION)
sum=$(sha256sum go.mod go.sum etcd/main.go build.sh | sha256sum | cut -c1-12)
key="k8s-${kube_version}_etcd-${etcd_version}_helm-${helm_version}_${go_version}_${sum}"
root="${ROOMSHARD_CONTROLPLANE_CACHE:-$HOME/.cache/roomshard/controlplane}"
bin="$root/$key/bin"

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler helm)
complete=1
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "control plane: reusing $bin" >&2
  echo "$bin"
  exit 0
fi

echo "control plane: building $key (a cold build takes a while; later runs reuse it)" >&2
tmp="$root/$key/bin.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
start=$(date +%s)

# Version strings, so `kubectl version` and Helm's kubeVersion check see a real release.
major=$(echo "${kube_version#v}" | cut -d. -f1)
minor=$(echo "${kube_version#v}" | cut -d. -f2)
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"

export CGO_ENABLED=0
# One package at a time: the machine has two cores and each of these links a large binary.
go build -trimpath -ldflags "$kube_ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler
go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" ./etcd
go build -trimpath -ldflags "$helm_ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm

rm -rf "$bin"
mv "$tmp" "$bin"
echo "control plane: built in $(( $(date +%s) - start )) s into $bin" >&2
echo "$bin"
