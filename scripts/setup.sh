#!/usr/bin/env bash
# Installs everything capsa's build, demo and tests need on a fresh Debian 12
# machine (run as root). Idempotent and quick the second time.
set -euo pipefail

PKGS=(
  # image building and the demo image
  e2fsprogs erofs-utils busybox-static cpio
  # container runtime build deps and peers for benchmarks
  libseccomp-dev pkg-config runc crun hyperfine
  # virtiofsd's build (scripts/build-virtiofsd.sh)
  libcap-ng-dev
  # engines that drive capsa, and a local registry for pull tests
  containerd docker-registry skopeo podman
  # image store tests: token-server signing key for the bearer-auth pull test
  openssl
  # reference VMM and the KVM test host
  qemu-system-x86
  # guest kernel build
  linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils kmod
  iproute2 procps
  # networks (docs/networking.md): podman's stack for bridges, ports and
  # names, CNI's host-local for addresses, nftables to join a VM's tap to its
  # network, and curl for the network tests
  netavark aardvark-dns containernetworking-plugins iptables nftables curl
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# crun (a benchmark peer) needs the hugetlb v1 hierarchy on hybrid hosts.
if [ -d /sys/fs/cgroup/memory ] && ! mountpoint -q /sys/fs/cgroup/hugetlb 2>/dev/null; then
  mkdir -p /sys/fs/cgroup/hugetlb
  mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb 2>/dev/null || true
fi
