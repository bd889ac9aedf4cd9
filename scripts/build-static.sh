#!/usr/bin/env bash
# Links the two binaries capsa wants static (glibc, +crt-static) and prints
# the directory they are in:
#   - capsa-agent, PID 1 of the guest's initramfs, which has no dynamic
#     loader and no libraries;
#   - capsa-vmm: a static capsa-vmm skips the dynamic loader and maps only
#     the parts of libc it uses (resident memory 3.9 -> 2.4 MiB, docs/vmm.md).
# Only the final link differs from the ordinary release build: `cargo rustc`
# passes crt-static to the binary crate alone, so every library compiled by
# `cargo build --release` is reused (libseccomp is static in every build,
# .cargo/config.toml). The results are copied to target/release/static/,
# where capsa looks first: cargo's own copy in target/release/ is relinked
# dynamically by the next plain build or test run.
#
# CARGO_TARGET_DIR is honoured (default: the workspace's target/).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
[ -f /usr/lib/x86_64-linux-gnu/libseccomp.a ] || {
  echo "build-static: libseccomp.a is missing: install libseccomp-dev (scripts/setup.sh)" >&2
  exit 1
}
out=$target_dir/release/static
mkdir -p "$out"
# One cargo call per binary (cargo rustc takes one); each resolves only its
# own package's features, so capsa-vmm does not carry the agent's.
# The agent is stripped: with debug info it is ~80 MB, and the guest loads
# every byte of its initramfs.
for b in capsa-agent capsa-vmm; do
  strip=
  [ "$b" = capsa-agent ] && strip="-C strip=symbols"
  # shellcheck disable=SC2086
  cargo rustc --release --quiet --manifest-path "$here/Cargo.toml" \
    -p "$b" --bin "$b" -- -C target-feature=+crt-static $strip >&2
  if readelf -l "$target_dir/release/$b" | grep -q 'program interpreter'; then
    echo "build-static: $target_dir/release/$b is dynamically linked" >&2
    exit 1
  fi
  # Copied to a new file, then renamed: a running VM keeps the old one.
  cp "$target_dir/release/$b" "$out/.$b.tmp"
  mv -f "$out/.$b.tmp" "$out/$b"
done
echo "$out"
