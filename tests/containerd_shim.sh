#!/bin/sh
# Drives containerd-shim-capsa-v2 through a private containerd and the real
# `ctr`, in one isolation mode, and prints one "@@ CASE code=N out=… err=…"
# line per case. tests/containerd_shim.rs runs it on this machine for
# container mode and inside the KVM test host for VM mode, and checks the
# lines.
#   containerd_shim.sh WORKDIR MODE SHIM CAPSA
# WORKDIR must be empty and short (socket paths); everything the run makes
# lives there, and the leak checks at the end look for anything left behind.
set -u
work=$1 mode=$2 shim=$3 capsa=$4
ns=capsa-test
rt=io.containerd.capsa.v2
mkdir -p "$work/bin" "$work/root" "$work/state"
ln -sf "$shim" "$work/bin/containerd-shim-capsa-v2"
sock=$work/c.sock
cat > "$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/opt"
EOF
ls /run/containerd/s 2>/dev/null | sort > "$work/sockets-before"

PATH="$work/bin:$PATH" CAPSA_SHIM_ROOT="$work/capsa" CAPSA_BIN="$capsa" \
  containerd --config "$work/config.toml" > "$work/containerd.log" 2>&1 &
cpid=$!
ctr="ctr -a $sock -n $ns"
up=no
for _ in $(seq 150); do
  $ctr version > /dev/null 2>&1 && { up=yes; break; }
  sleep 0.1
done
echo "@@ containerd-up code=0 out=$up err="
[ $up = yes ] || { tail -20 "$work/containerd.log"; kill $cpid; exit 1; }

"$capsa" --root "$work/store" load --demo > /dev/null &&
  "$capsa" --root "$work/store" save demo -o "$work/demo.tar" &&
  $ctr image import "$work/demo.tar" > /dev/null 2>&1
img=$($ctr image ls -q | head -1)
echo "@@ image code=0 out=$img err="

# The isolation mode is the bundle's annotation, as a RuntimeClass would set it.
run="$ctr run --runtime $rt --annotation io.capsa.isolation=$mode"

report() { # name code
  printf '@@ %s code=%s out=%s err=%s\n' "$1" "$2" \
    "$(head -c 300 "$work/o" | tr '\n\r' '|')" "$(head -c 300 "$work/e" | tr '\n\r' '|')"
}
case_() { # name command...
  name=$1; shift
  "$@" > "$work/o" 2> "$work/e" < /dev/null
  report "$name" $?
}
# Waits until task $1 is in state $2 (ctr task ls).
await() {
  for _ in $(seq 600); do
    $ctr task ls 2>/dev/null | grep -q "^$1 .*$2" && return 0
    sleep 0.1
  done
  return 1
}

t0=$(date +%s.%N)
case_ run-exit $run --rm "$img" c1 sh -c 'echo hi; echo oops >&2; exit 3'
t1=$(date +%s.%N)
echo "@@ run-seconds code=0 out=$(awk "BEGIN { print $t1 - $t0 }") err="
printf 'line one\nline two\n' > "$work/in"
$run --rm "$img" c2 tr a-z A-Z < "$work/in" > "$work/o" 2> "$work/e"
report run-stdin $?

# detached: exec, ps, metrics, kill, status, delete
case_ run-detached $run -d "$img" c3 sh -c 'sleep 1000'
await c3 RUNNING
case_ exec $ctr task exec --exec-id e1 c3 sh -c 'echo x; exit 4'
$ctr task exec --exec-id e2 c3 tr a-z A-Z < "$work/in" > "$work/o" 2> "$work/e"
report exec-stdin $?
case_ ps sh -c "$ctr task ps c3 | tail -n +2 | wc -l"
case_ metrics $ctr task metrics c3
case_ status-running sh -c "$ctr task ls | grep '^c3 '"
case_ kill $ctr task kill -s SIGKILL c3
await c3 STOPPED
case_ status-stopped sh -c "$ctr task ls | grep '^c3 '"
case_ exec-when-stopped $ctr task exec --exec-id e3 c3 true
case_ task-delete $ctr task delete c3
case_ container-delete $ctr container delete c3

# an attached `ctr run` returns the status of a kill
$run --rm "$img" c4 sh -c 'sleep 1000' > "$work/o4" 2>&1 &
rpid=$!
await c4 RUNNING
$ctr task kill -s SIGKILL c4
wait $rpid
code=$?
cp "$work/o4" "$work/o"; : > "$work/e"
report run-killed $code

# two containers at once
$run -d "$img" c5 sh -c 'sleep 1000' > /dev/null
$run -d "$img" c6 sh -c 'sleep 1000' > /dev/null
await c5 RUNNING; await c6 RUNNING
case_ two-running sh -c "$ctr task ls | grep -c RUNNING"
case_ two-exec sh -c "$ctr task exec --exec-id a c5 echo five; $ctr task exec --exec-id b c6 echo six"
$ctr task kill -s SIGKILL c5; $ctr task kill -s SIGKILL c6
await c5 STOPPED; await c6 STOPPED
case_ two-delete sh -c "$ctr task delete c5; a=\$?; $ctr task delete c6; echo \$a \$?; $ctr container delete c5 c6"

# a terminal (script(1) gives ctr one)
case_ tty script -qec "$run --rm -t $img c7 sh -c 'test -t 0 && test -t 1 && echo is-a-tty; exit 5'" /dev/null

# a pod, marked as containerd's CRI plugin marks one (one shim for the pod):
# in VM mode its member joins the sandbox's VM — one capsa-vmm, one guest
# kernel (boot_id) — and the sandbox outlives the member.
pod="--annotation io.kubernetes.cri.sandbox-id=p0"
$run -d $pod --annotation io.kubernetes.cri.container-type=sandbox "$img" p0 sleep 1000 > /dev/null
await p0 RUNNING
# The member joins the sandbox's network namespace, as the CRI plugin asks
# (by the sandbox's host PID; in VM mode capsa maps it into the guest).
p0pid=$($ctr task ls | awk '$1 == "p0" { print $2 }')
$run -d $pod --annotation io.kubernetes.cri.container-type=container \
  --with-ns "network:/proc/$p0pid/ns/net" "$img" p1 sleep 1000 > /dev/null
await p1 RUNNING
case_ pod-kernels sh -c "$ctr task exec --exec-id k0 p0 cat /proc/sys/kernel/random/boot_id
  $ctr task exec --exec-id k1 p1 cat /proc/sys/kernel/random/boot_id
  cat /proc/sys/kernel/random/boot_id; pgrep -c capsa-vmm
  $ctr task exec --exec-id n0 p0 readlink /proc/self/ns/net
  $ctr task exec --exec-id n1 p1 readlink /proc/self/ns/net; true"
$ctr task kill -s SIGKILL p1; await p1 STOPPED
case_ pod-sandbox-alive $ctr task exec --exec-id k2 p0 echo sandbox-alive
$ctr task kill -s SIGKILL p0; await p0 STOPPED
case_ pod-delete sh -c "$ctr task delete p1 && $ctr task delete p0 && $ctr container delete p0 p1"

case_ containers-left sh -c "$ctr container ls -q | wc -l"
$ctr image rm "$img" > /dev/null 2>&1
kill $cpid
wait $cpid

# Nothing may be left behind once containerd is gone.
shims=0
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
    *containerd-shim-capsa-v2*"-address $sock "*) shims=$((shims + 1)) ;;
  esac
done
echo "@@ leak-shims code=0 out=$shims err="
echo "@@ leak-mounts code=0 out=$(grep -c " $work" /proc/self/mountinfo) err="
# capsa's state: no file, no container directory, no runtime state (the
# agent's initramfs is a cache, kept on purpose).
find "$work/capsa" -mindepth 1 \( ! -type d -o -path '*/containers/*' -o -path '*/runtime/*' \) ! -path '*/initramfs/*' > "$work/left" 2>/dev/null
echo "@@ leak-capsa-state code=0 out=$(wc -l < "$work/left") err=$(head -5 "$work/left" | tr '\n' ' ')"
echo "@@ leak-cgroups code=0 out=$(find /sys/fs/cgroup -path "*/$ns/*" -type d 2>/dev/null | wc -l) err="
ls /run/containerd/s 2>/dev/null | sort > "$work/sockets-after"
echo "@@ leak-sockets code=0 out=$(comm -13 "$work/sockets-before" "$work/sockets-after" | wc -l) err="
# ctr's spec puts each container's cgroup under /<namespace>/<id>: drop the
# (empty) namespace level too.
find /sys/fs/cgroup -depth -type d -name "$ns" -exec rmdir {} \; 2>/dev/null
echo "@@ done code=0 out= err="
