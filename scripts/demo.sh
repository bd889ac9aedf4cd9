#!/usr/bin/env bash
# capsa's main job on its built-in default (README command 1): build
# everything, make the demo image, run it in both isolation modes and show
# what each costs.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: capsa creates namespaces and VMs: run as root" >&2; exit 1; }
bash scripts/build.sh
capsa=$PWD/target/release/capsa
root=/var/lib/capsa-demo
workload='echo "hello from $(hostname): kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s)"'

echo "== the demo image (built offline from Debian's busybox-static)"
$capsa --root $root load --demo
$capsa --root $root images

# Prints the median wall-clock time of 5 runs of `capsa run --rm …`.
median_ms() {
  local times=() t0 t1
  for _ in 1 2 3 4 5; do
    t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n 3p
}

echo
echo "== container isolation, on this machine (namespaces, cgroups, seccomp; the host kernel)"
$capsa --root $root run --rm demo sh -c "$workload"
# Timed without a network (the default): the isolation's own cost; a
# network (bridge) adds netavark's setup and teardown, in both modes.
c_ms=$(median_ms $capsa --root $root run --rm --network none demo true)
echo "-- cost: capsa run --rm --network none demo true takes $c_ms ms (median of 5)"
b_ms=$(median_ms $capsa --root $root run --rm --network bridge demo true)
echo "   with --network bridge: $b_ms ms"

echo
echo "== VM isolation (a KVM microVM with its own kernel and capsa-agent)"
if $capsa --root $root run --rm --isolation vm demo true 2>/tmp/capsa-demo-vm.err; then
  $capsa --root $root run --rm --isolation vm demo sh -c "$workload"
  v_ms=$(median_ms $capsa --root $root run --rm --isolation vm --network none demo true)
  echo "-- cost: capsa run --rm --isolation vm --network none demo true takes $v_ms ms (median of 5)"
else
  echo "-- $(cat /tmp/capsa-demo-vm.err)"
  echo "-- so the VM half runs inside the KVM test host (a nested-KVM VM under qemu TCG),"
  echo "   where both modes are measured side by side; emulation makes everything there slower."
  inner=$(cat <<EOS
set -e
c="$capsa --root /run/capsa-demo"
\$c load --demo >/dev/null
t() { local t0 t1; t0=\$(date +%s%N); "\$@" >/dev/null; t1=\$(date +%s%N); echo \$(( (t1 - t0) / 1000000 )); }
echo "container: \$(\$c run --rm demo sh -c '$workload')"
echo "container: run --rm --network none demo true took \$(t \$c run --rm --network none demo true) ms"
echo "vm:        \$(\$c run --rm --isolation vm demo sh -c '$workload')"
echo "vm:        run --rm --isolation vm --network none demo true took \$(t \$c run --rm --isolation vm --network none demo true) ms"
echo "(timed without a network: the isolation's own cost; --network bridge adds netavark's setup)"
EOS
)
  rc=0
  $capsa test-host --timeout 600 -- /bin/sh -c "$inner" || rc=$?
  case $rc in
    0) ;;
    24[0-2]) echo "-- the KVM test host itself failed (exit $rc), not capsa: see above and docs/guest-kernel.md" ;;
    *) echo "-- the VM half failed inside the test host (exit $rc; see above)" ;;
  esac
fi
