#!/bin/sh
# Start cost of a VM-mode container: a new VM per container against a
# member joining a running VM-mode pod, and container mode, each through
# containerd 1.6's runc shim with `--runc-binary capsa` (`ctr run --rm … true`).
# A measurement, not a test. VM mode needs real KVM, so on this project's
# PVM machines run it inside the KVM test host:
#   target/release/capsa test-host -- sh scripts/bench-pod.sh $PWD/target/release/capsa [RUNS]
set -u
capsa=$1 runs=${2:-5} dir=/run/capsa-bench-pod
mkdir -p $dir
$capsa --root $dir/img load --demo > /dev/null && $capsa --root $dir/img save demo -o $dir/demo.tar || exit 1
cat > $dir/containerd.toml << T
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/c.sock"
[ttrpc]
  address = "$dir/c.sock.ttrpc"
T
containerd --config $dir/containerd.toml > $dir/containerd.log 2>&1 &
daemon=$!
ctr="ctr -a $dir/c.sock -n bench"
for _ in $(seq 100); do $ctr version > /dev/null 2>&1 && break; sleep 0.1; done
$ctr image import $dir/demo.tar > /dev/null
img=docker.io/library/demo:latest
vm="--runc-binary $capsa --annotation io.capsa.isolation=vm"
ms() { echo $(($(date +%s%N) / 1000000)); }
timed() { # label ctr-run-args...
  label=$1; shift
  t=$(ms); $ctr run --rm "$@" true; echo "$label $(($(ms) - t)) ms"
}
for i in $(seq $runs); do timed new-vm $vm $img new$i; done
$ctr run -d $vm --annotation io.kubernetes.cri.container-type=sandbox $img pod0 sleep 300
for i in $(seq $runs); do
  timed join-pod $vm --annotation io.kubernetes.cri.container-type=container \
    --annotation io.kubernetes.cri.sandbox-id=pod0 $img member$i
done
for i in $(seq $runs); do timed container-mode --runc-binary $capsa $img c$i; done
$ctr task kill -s KILL pod0; sleep 2; $ctr task delete pod0 > /dev/null 2>&1; $ctr container delete pod0
kill $daemon; wait $daemon
