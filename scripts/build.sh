#!/usr/bin/env bash
# Builds everything capsa's demo and tests run (scripts/demo.sh and
# scripts/test.sh call it): the packages (scripts/setup.sh), the guest and
# test-host kernels (cached in /var/cache/capsa/kernels), the release
# binaries, the static links of capsa-agent and capsa-vmm, and virtiofsd
# (scripts/build-virtiofsd.sh).
#
# The kernels build beside cargo, at the lowest CPU priority: on a 2-core
# machine each fills the other's single-threaded stretches (unpacking the
# kernel source, linking vmlinux, cargo's last crates and links). Both are
# cached, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Its own process group, so a failed cargo build stops make too.
CAPSA_KERNEL_LINE_PROGRESS=1 setsid bash scripts/build-kernels.sh >/dev/null &
kernels=$!
trap 'kill -- -$kernels 2>/dev/null || true' EXIT
cargo build --release --workspace --bins
bash scripts/build-virtiofsd.sh
bash scripts/build-static.sh >/dev/null
if ! wait "$kernels"; then
  echo "build: the kernel build failed (see its lines above)" >&2
  exit 1
fi
trap - EXIT
