#!/usr/bin/env bash
# Builds capsa-agent as a static binary (glibc, +crt-static; libseccomp
# linked statically) and prints its path. Cargo caches the build; the
# explicit --target keeps build scripts and proc-macros dynamic.
#
#   scripts/build-agent.sh               # print the agent binary's path
#   scripts/build-agent.sh --initramfs   # print the path of its cached initramfs
#
# CARGO_TARGET_DIR is honoured (default: the workspace's target/).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
triple=x86_64-unknown-linux-gnu
libdir=/usr/lib/x86_64-linux-gnu
[ -f "$libdir/libseccomp.a" ] || {
  echo "build-agent: $libdir/libseccomp.a is missing: install libseccomp-dev (scripts/setup.sh)" >&2
  exit 1
}
RUSTFLAGS="-C target-feature=+crt-static" \
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$libdir \
CARGO_TARGET_DIR=$target_dir \
  cargo build --release --quiet --manifest-path "$here/Cargo.toml" \
    -p capsa-agent --bin capsa-agent --target "$triple" >&2
bin=$target_dir/$triple/release/capsa-agent
# The initramfs has no dynamic loader and no libraries.
if readelf -l "$bin" | grep -q 'program interpreter'; then
  echo "build-agent: $bin is dynamically linked; it cannot be PID 1 of the guest" >&2
  exit 1
fi
# Debug info makes it ~80 MB; the guest loads every byte of its initramfs.
# strip writes a new file, so cargo's own copy in deps/ keeps its symbols.
strip "$bin"
case "${1:-}" in
  --initramfs) "$bin" initramfs ;;
  "") echo "$bin" ;;
  *) echo "usage: scripts/build-agent.sh [--initramfs]" >&2; exit 2 ;;
esac
