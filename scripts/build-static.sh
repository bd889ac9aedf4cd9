#!/usr/bin/env bash
# Builds the two binaries capsa wants static (glibc, +crt-static) and prints
# the agent's path:
#   - capsa-agent, PID 1 of the guest's initramfs, which has no dynamic
#     loader and no libraries (libseccomp is linked statically);
#   - capsa-vmm: a static capsa-vmm skips the dynamic loader and maps only
#     the parts of libc it uses, which took exec → first KVM_RUN from
#     ~2.9 ms to ~2.4 ms and its resident memory from 3.5 to 2.4 MiB
#     (docs/vmm.md, "Measuring").
# capsa finds both in target/x86_64-unknown-linux-gnu/<profile>/ before the
# dynamically linked copies a plain `cargo build` leaves next to capsa.
# Cargo caches the build; the explicit --target keeps build scripts and
# proc-macros dynamic.
#
#   scripts/build-static.sh               # print the agent binary's path
#   scripts/build-static.sh --initramfs   # print the path of its cached initramfs
#
# CARGO_TARGET_DIR is honoured (default: the workspace's target/).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
triple=x86_64-unknown-linux-gnu
libdir=/usr/lib/x86_64-linux-gnu
[ -f "$libdir/libseccomp.a" ] || {
  echo "build-static: $libdir/libseccomp.a is missing: install libseccomp-dev (scripts/setup.sh)" >&2
  exit 1
}
out=$target_dir/$triple/release
# One cargo call per binary: built together, cargo would unify their
# dependencies' features and capsa-vmm would carry the agent's.
for b in capsa-agent capsa-vmm; do
  RUSTFLAGS="-C target-feature=+crt-static" \
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$libdir \
  CARGO_TARGET_DIR=$target_dir \
    cargo build --release --quiet --manifest-path "$here/Cargo.toml" \
      -p "$b" --bin "$b" --target "$triple" >&2
  if readelf -l "$out/$b" | grep -q 'program interpreter'; then
    echo "build-static: $out/$b is dynamically linked" >&2
    exit 1
  fi
done
# Debug info makes the agent ~80 MB; the guest loads every byte of its
# initramfs. strip writes a new file, so cargo's own copy in deps/ keeps
# its symbols.
strip "$out/capsa-agent"
case "${1:-}" in
  --initramfs) "$out/capsa-agent" initramfs ;;
  "") echo "$out/capsa-agent" ;;
  *) echo "usage: scripts/build-static.sh [--initramfs]" >&2; exit 2 ;;
esac
