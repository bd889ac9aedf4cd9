#!/usr/bin/env bash
# Builds (or finds cached) capsa's guest kernel and KVM test-host kernel and
# prints their paths. See docs/guest-kernel.md; CAPSA_KERNEL_CACHE moves the
# cache (default /var/cache/capsa/kernels).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for kind in guest test-host; do   # one kernel: the second is a cache hit
  path=$("$here/kernel-config/build.sh" "$kind")
  echo "$kind: $path"
done
