#!/usr/bin/env bash
# Builds and installs the Rust virtiofsd (crates.io package `virtiofsd`),
# the vhost-user daemon behind VM mode's virtio-fs shares, as
# /usr/local/bin/virtiofsd. Debian 12 ships no Rust virtiofsd, and qemu's C
# one is deprecated. Quick when that version is installed already.
set -euo pipefail

version=1.14.0
bin=/usr/local/bin/virtiofsd
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q " $version\$"; then
  exit 0
fi
echo "build-virtiofsd: building virtiofsd $version (once)" >&2
# libseccomp-dev and libcap-ng-dev come from scripts/setup.sh.
cargo install --quiet --locked --version "$version" --root /usr/local virtiofsd
"$bin" --version >&2
