#!/usr/bin/env bash
# Builds capsa's kernel (an ELF vmlinux with the PVH entry note) from
# Debian's linux-source-6.1 package, and caches it. One kernel is both the
# microVM guest's and the KVM test host's (see below); the argument names
# the role asked for.
#
#   build.sh [--key] guest|test-host
#
# Prints the path of the cached vmlinux on stdout (building it first if it is
# not cached); progress and errors go to stderr. With --key, prints the cache
# directory the kernel would live in, without building.
#
# The cache key hashes every input: the kernel source (package version, or
# the tarball's sha256 for a custom CAPSA_KERNEL_SOURCE), the compiler, the
# config fragments, our patches and this script. A second run with the same
# inputs does nothing. The cache lives outside the checkout so that a fresh
# clone reuses it.
#
# Environment:
#   CAPSA_KERNEL_CACHE   cache root (default /var/cache/capsa/kernels)
#   CAPSA_KERNEL_SOURCE  source tarball (default Debian's linux-source-6.1)
#   CAPSA_KERNEL_JOBS    make -j (default: number of CPUs)
#   CAPSA_KERNEL_LINE_PROGRESS  set: progress as lines even on a terminal
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${CAPSA_KERNEL_CACHE:-/var/cache/capsa/kernels}
jobs=${CAPSA_KERNEL_JOBS:-$(nproc)}
deb_pkg=linux-source-6.1

die() { echo "capsa-kernel: error: $*" >&2; exit 1; }
say() { echo "capsa-kernel: $*" >&2; }

print_key=false
if [ "${1:-}" = "--key" ]; then print_key=true; shift; fi
# One kernel serves both roles: the guest's options plus the test host's few
# (KVM host, 9p, tun, virtio-console; see fragments/test-host.config). Those
# select core options (preempt and MMU notifiers) that change structures
# every file includes, so two kernels would each compile everything; one
# build is half the first-run time. The guest's command line keeps KVM from
# initialising in it (shim/src/microvm: initcall_blacklist).
case "${1:-}" in
  guest|test-host) ;;
  *) die "usage: build.sh [--key] guest|test-host" ;;
esac
kind=kernel
fragments=("$here/fragments/guest.config" "$here/fragments/test-host.config")

# --- The kernel source and its identity --------------------------------------
if [ -n "${CAPSA_KERNEL_SOURCE:-}" ]; then
  tarball=$CAPSA_KERNEL_SOURCE
  [ -r "$tarball" ] || die "CAPSA_KERNEL_SOURCE=$tarball is not readable"
  source_id="tarball sha256:$(sha256sum "$tarball" | cut -d' ' -f1)"
else
  tarball=/usr/src/linux-source-6.1.tar.xz
  version=$(dpkg-query -W -f='${Version}' "$deb_pkg" 2>/dev/null || true)
  if [ -z "$version" ] || [ ! -r "$tarball" ]; then
    die "the kernel source is missing: install the Debian package $deb_pkg (run scripts/setup.sh as root), or set CAPSA_KERNEL_SOURCE to a kernel source tarball"
  fi
  source_id="debian $deb_pkg $version"
fi
command -v gcc >/dev/null || die "gcc is missing: run scripts/setup.sh (build-essential and the kernel build deps)"
compiler=$(gcc --version | head -n1)

shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

# The manifest is what the key hashes; it is also stored next to the kernel.
src_manifest="source: $source_id"$'\n'
for p in "${patches[@]}"; do
  src_manifest+="patch: $(basename "$p") $(hash_of "$p")"$'\n'
done
manifest="capsa-kernel v2"$'\n'"compiler: $compiler"$'\n'"$src_manifest"
for f in "${fragments[@]}"; do
  manifest+="fragment: $(basename "$f") $(hash_of "$f")"$'\n'
done
manifest+="script: build.sh $(hash_of "${BASH_SOURCE[0]}")"$'\n'

key=$(printf '%s' "$manifest" | sha256sum | cut -c1-16)
src_key=$(printf '%s' "$src_manifest" | sha256sum | cut -c1-16)
out_dir=$cache/$kind-$key

if $print_key; then echo "$out_dir"; exit 0; fi
if [ -f "$out_dir/vmlinux" ]; then echo "$out_dir/vmlinux"; exit 0; fi

mkdir -p "$cache" || die "cannot create the kernel cache $cache (set CAPSA_KERNEL_CACHE to a writable directory)"

# One builder per kernel at a time; whoever waits finds the result cached.
exec 9>"$cache/.$kind-$key.lock"
if ! flock -n 9; then
  say "another process is building the kernel; waiting for it"
  flock 9
fi
if [ -f "$out_dir/vmlinux" ]; then echo "$out_dir/vmlinux"; exit 0; fi

start=$(date +%s)
elapsed() { local s=$(( $(date +%s) - start )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# --- Unpacked and patched source tree, shared by both kernels ----------------
src=$cache/src-$src_key
if [ ! -f "$src/Makefile" ]; then
  exec 8>"$cache/.src-$src_key.lock"
  flock 8
  if [ ! -f "$src/Makefile" ]; then
    say "unpacking $tarball ($source_id)"
    src_tmp=$(mktemp -d "$cache/.tmp-src-XXXXXX")
    chmod 755 "$src_tmp"
    trap 'rm -rf "$src_tmp"' EXIT
    tar -xf "$tarball" -C "$src_tmp" --strip-components=1 \
      || die "cannot unpack $tarball"
    for p in "${patches[@]}"; do
      say "applying $(basename "$p")"
      patch -d "$src_tmp" -p1 --forward --quiet <"$p" >&2 || die "patch $(basename "$p") does not apply"
    done
    rm -rf "$src"
    mv "$src_tmp" "$src"
    trap - EXIT
  fi
  exec 8>&-
fi

# --- Configure and build in a temporary directory, then rename ---------------
tmp=$(mktemp -d "$cache/.tmp-$kind-$key-XXXXXX")
obj=$tmp/obj
log=$tmp/build.log
mkdir -p "$obj" "$tmp/result"
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "capsa-kernel: kernel build FAILED after $(elapsed)" >&2
    # With make -j the first compiler error is often far above the tail.
    if grep -qE '(error|Error):' "$log" 2>/dev/null; then
      echo "capsa-kernel: first errors:" >&2
      grep -m 5 -B 2 -A 3 -E ': (fatal )?error:|\*\*\*' "$log" >&2 || true
    fi
    echo "capsa-kernel: last lines of the build log:" >&2
    tail -n 40 "$log" >&2 || true
    cp "$log" "$cache/last-failed-$kind.log" 2>/dev/null \
      && echo "capsa-kernel: full log kept at $cache/last-failed-$kind.log" >&2
  fi
  rm -rf "$tmp"
  exit $rc
}
trap on_exit EXIT

say "configuring the kernel (allnoconfig + $(for f in "${fragments[@]}"; do printf '%s ' "$(basename "$f")"; done| sed 's/ $//'))"
(
  cd "$src"
  # -n: start from allnoconfig, so everything the fragments do not ask for
  # is off.
  scripts/kconfig/merge_config.sh -n -O "$obj" "${fragments[@]}"
  make -s O="$obj" olddefconfig
) >"$log" 2>&1 || die "configuration failed"

# Every line of every fragment must be in the final .config exactly as
# written; "is not set" lines are also satisfied by the symbol being absent.
missing=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qxF -- "$line" "$obj/.config" || missing+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo absent))") ;;
    "# CONFIG_"*" is not set")
      sym=${line#\# }; sym=${sym%% *}
      if grep -q "^$sym=" "$obj/.config"; then missing+=("$line (got: $(grep "^$sym=" "$obj/.config"))"); fi ;;
  esac
done < <(cat "${fragments[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  {
    echo "capsa-kernel: the resolved config does not have what the fragments ask for"
    echo "(a dependency is missing from the fragment, or the symbol does not exist in this kernel):"
    printf '  %s\n' "${missing[@]}"
  } >>"$log"
  die "config check failed: ${missing[*]}"
fi
say "config check passed: every fragment option is set"

say "building the kernel with make -j$jobs (log: $log)"
(
  cd "$src"
  nice -n 19 make O="$obj" -j"$jobs" vmlinux >>"$log" 2>&1
) &
make_pid=$!
# Progress: the number of compiled objects and the elapsed time.
# One line every 30 s instead of a redrawn one when stderr is shared with
# another build (scripts/build.sh runs cargo beside it).
interactive=false
[ -t 2 ] && [ -z "${CAPSA_KERNEL_LINE_PROGRESS:-}" ] && interactive=true
while kill -0 "$make_pid" 2>/dev/null; do
  sleep 5
  n=$(grep -c '^  CC ' "$log" || true)
  if $interactive; then
    printf '\rcapsa-kernel: %s: %s files compiled, %s ' "kernel" "$n" "$(elapsed)" >&2
  elif [ $(( ($(date +%s) - start) % 30 )) -lt 5 ]; then
    say "kernel: $n files compiled, $(elapsed)"
  fi
done
$interactive && echo >&2
wait "$make_pid" || die "make vmlinux failed"

vmlinux=$obj/vmlinux
[ -f "$vmlinux" ] || die "make succeeded but $vmlinux is missing"
# PVH entry: an ELF note of owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18).
if ! readelf -n "$vmlinux" | grep -A1 -E '^\s*Xen' | grep -qE '0x00000012|PHYS32_ENTRY'; then
  readelf -n "$vmlinux" >>"$log" 2>&1 || true
  die "$vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
fi

cp "$vmlinux" "$tmp/result/vmlinux"
cp "$obj/.config" "$tmp/result/config"
printf '%s' "$manifest" >"$tmp/result/manifest"
cp "$log" "$tmp/result/build.log"
rm -rf "$out_dir"
mv "$tmp/result" "$out_dir"
say "kernel built in $(elapsed): $out_dir/vmlinux ($(( $(stat -c %s "$out_dir/vmlinux") / 1048576 )) MiB)"
echo "$out_dir/vmlinux"
