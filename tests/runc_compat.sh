#!/bin/sh
# Drives capsa through a real runc client, as tools that drive runc do:
#   runc_compat.sh CAPSA containerd|podman container|vm DIR
# containerd: a private containerd (root, state and sockets under DIR) and
# the stock runc shim with `ctr run --runc-binary CAPSA`; podman: podman
# with private --root/--runroot/--tmpdir and `--runtime CAPSA`. In vm mode
# every container carries the annotation io.capsa.isolation=vm.
# Prints one "@@ NAME code=N out=…" line per step (stdout and stderr, newlines
# as |); runc_compat.rs checks them. Ends by stopping its daemon and listing
# what is left of DIR on the host (mounts, processes, cgroups).
capsa=$1 client=$2 mode=$3 dir=$4
mkdir -p "$dir" || exit 1
o=$dir/o
annotation=
[ "$mode" = vm ] && annotation="--annotation io.capsa.isolation=vm"

report() { # name code
  printf '@@ %s code=%s out=%s\n' "$1" "$2" "$(tr '\n' '|' < "$o" | head -c 400)"
}
step() { # name command... (stdout and stderr into $o)
  name=$1; shift
  "$@" > "$o" 2>&1
  report "$name" $?
}
state_step() { # name capsa-args...: `capsa state`, its id, status and isolation lines
  name=$1; shift
  "$capsa" "$@" > "$dir/state" 2>&1
  code=$?
  grep -E '"(id|status)"|io.capsa.isolation|capsa:' "$dir/state" > "$o"
  report "$name" $code
}
# Waits up to $1 tenths of a second for the command after it to succeed.
poll() {
  n=$1; shift
  while [ "$n" -gt 0 ]; do "$@" > /dev/null 2>&1 && return 0; sleep 0.1; n=$((n - 1)); done
  return 1
}

leftovers() { # ids...: what is left on the host of DIR and of these containers
  grep -F "$dir" /proc/self/mountinfo | sed 's/^/mount: /'
  for p in /proc/[0-9]*; do
    cmd=$( (tr '\0' ' ' < "$p/cmdline") 2> /dev/null)
    root=$(readlink "$p/root" 2> /dev/null)
    case "$cmd" in *runc_compat.sh*) continue ;; esac
    case "$cmd $root" in *"$dir"*) echo "process ${p#/proc/}: $cmd (root $root)" ;; esac
  done
  for id in "$@"; do
    find /sys/fs/cgroup -maxdepth 4 -type d -name "*$id*" 2> /dev/null | sed 's/^/cgroup: /'
  done
}

# The demo image, as an OCI archive both clients import.
"$capsa" --root "$dir/capsa-images" load --demo > "$o" 2>&1 &&
  "$capsa" --root "$dir/capsa-images" save demo -o "$dir/demo.tar" >> "$o" 2>&1
report setup $?
image=docker.io/library/demo:latest

case $client in
containerd)
  cat > "$dir/containerd.toml" << EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
EOF
  containerd --config "$dir/containerd.toml" > "$dir/containerd.log" 2>&1 &
  daemon=$!
  ctr="ctr -a $dir/containerd.sock -n capsa-test"
  poll 300 $ctr version
  step daemon-up $ctr version
  step import $ctr image import "$dir/demo.tar"
  runtime="--runc-binary $capsa --runc-root $dir/runc $annotation"
  $ctr run --rm $runtime $image t1 sh -c 'echo hi; echo err >&2; exit 3' > "$o" 2> "$dir/e"
  code=$?; cat "$dir/e" >> "$o"; report run-rm "$code"
  step run-d $ctr run -d $runtime $image t2 sh -c 'echo ready; exec sleep 300'
  poll 300 sh -c "$ctr task ls | grep -q 't2 .*RUNNING'"
  step task-ls $ctr task ls
  state_step state --root "$dir/runc/capsa-test" state t2
  step exec $ctr task exec --exec-id e1 t2 sh -c 'echo x; echo y >&2'
  step exec-code $ctr task exec --exec-id e2 t2 sh -c 'exit 4'
  # runc's exec --cgroup on the shim's container: a sub-cgroup of the
  # container's (in VM mode, of its cgroup in the guest)
  step exec-cgroup "$capsa" --root "$dir/runc/capsa-test" exec --cgroup sub t2 cat /proc/self/cgroup
  step ps $ctr task ps t2
  step kill $ctr task kill -s SIGKILL t2
  poll 300 sh -c "$ctr task ls | grep -q 't2 .*STOPPED'"
  step stopped $ctr task ls
  step task-delete $ctr task delete t2
  step container-delete $ctr container delete t2
  # A pod, marked as containerd's CRI plugin marks one: a sandbox container
  # and members naming it. In VM mode the members join the sandbox's VM:
  # one capsa-vmm, one guest kernel (boot_id) for the whole pod.
  sandbox="--annotation io.kubernetes.cri.container-type=sandbox"
  member="--annotation io.kubernetes.cri.container-type=container --annotation io.kubernetes.cri.sandbox-id=pod0"
  step pod-sandbox $ctr run -d $runtime $sandbox $image pod0 sleep 300
  poll 300 sh -c "$ctr task ls | grep -q 'pod0 .*RUNNING'"
  # pod1 joins the pod's network namespace, named as the CRI plugin names
  # it (by the sandbox's host PID; in VM mode capsa maps it into the guest).
  pid0=$($ctr task ls | awk '$1 == "pod0" { print $2 }')
  step pod-member $ctr run -d $runtime $member --with-ns "network:/proc/$pid0/ns/net" $image pod1 sleep 300
  poll 300 sh -c "$ctr task ls | grep -q 'pod1 .*RUNNING'"
  {
    $ctr task exec --exec-id b0 pod0 cat /proc/sys/kernel/random/boot_id
    $ctr task exec --exec-id b1 pod1 cat /proc/sys/kernel/random/boot_id
    cat /proc/sys/kernel/random/boot_id
    pgrep -c capsa-vmm
    $ctr task exec --exec-id n0 pod0 readlink /proc/self/ns/net
    $ctr task exec --exec-id n1 pod1 readlink /proc/self/ns/net
  } > "$o" 2>&1
  report pod-kernels 0
  # a member with a host directory, read-write (in VM mode through the
  # pod's shared directory)
  mkdir -p "$dir/podvol" && echo from-host > "$dir/podvol/in"
  $ctr run --rm $runtime $member --mount "type=bind,src=$dir/podvol,dst=/data,options=rbind:rw" $image pod2 \
    sh -c 'cat /data/in; echo from-pod2 > /data/out; exit 6' > "$o" 2>&1
  report pod-run-rm $?
  cat "$dir/podvol/out" > "$o" 2>&1; report pod-volume $?
  $ctr run --rm $runtime $member $image pod3 sh -c 'echo from-pod3' > "$o" 2>&1
  report pod-member-again $?
  step pod-kill-member $ctr task kill -s SIGKILL pod1
  poll 300 sh -c "$ctr task ls | grep -q 'pod1 .*STOPPED'"
  $ctr task exec --exec-id a0 pod0 echo sandbox-alive > "$o" 2>&1
  report pod-sandbox-alive $?
  $ctr task delete pod1 > /dev/null 2>&1 && $ctr container delete pod1 > /dev/null 2>&1
  step pod-kill-sandbox $ctr task kill -s SIGKILL pod0
  poll 300 sh -c "$ctr task ls | grep -q 'pod0 .*STOPPED'"
  $ctr task delete pod0 > "$o" 2>&1 && $ctr container delete pod0 >> "$o" 2>&1
  report pod-delete $?
  step runc-list "$capsa" --root "$dir/runc/capsa-test" list -q
  step image-rm $ctr image rm $image
  kill "$daemon"; wait "$daemon"
  ids="t1 t2 pod0 pod1 pod2 pod3"
  # ctr's spec puts each container's cgroup under /<namespace>/<id>: drop
  # the namespace parents once empty (rmdir keeps one with a leaked child,
  # which the leak check below still finds by its id).
  find /sys/fs/cgroup -depth -type d -name capsa-test -exec rmdir {} \; 2>/dev/null
  ;;
podman)
  # capsa's state is in its default root here: podman 4.3 does not pass
  # --runtime-flag flags (a runtime root) on to its cleanup process, which
  # calls `capsa delete --force ID` with only PATH in its environment, so a
  # private capsa root would leak every container that exits by itself.
  # The leak checks below are per container ID.
  podman="podman --root $dir/podman/root --runroot $dir/podman/runroot --tmpdir $dir/podman/tmp
    --storage-driver vfs --cgroup-manager cgroupfs --events-backend file --runtime $capsa"
  # podman would raise the open-files and processes limits, which this
  # sandbox does not allow (no CAP_SYS_RESOURCE): name values below them.
  run="--network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 $annotation"
  step load $podman load -i "$dir/demo.tar"
  step run-rm $podman run --rm --cidfile "$dir/cid1" $run $image sh -c 'echo hi; echo err >&2'
  step run-exit $podman run --rm --cidfile "$dir/cid2" $run $image sh -c 'exit 3'
  step run-d $podman run -d --cidfile "$dir/cid3" --name p1 $run $image sh -c 'trap "exit 0" TERM; echo ready; while :; do sleep 0.1; done'
  id=$(cat "$dir/cid3")
  state_step state state "$id"
  step exec $podman exec p1 sh -c 'echo x; echo y >&2'
  step exec-code $podman exec p1 sh -c 'exit 4'
  step stop $podman stop -t 5 p1
  step wait $podman wait p1
  step rm $podman rm p1
  # a read-write volume, and writes to the root that land in podman's
  # rootfs (VM mode shares both with virtio-fs, written in place as runc does)
  mkdir -p "$dir/pvol"
  step vol-rw $podman run --cidfile "$dir/cid5" --name pv $run -v "$dir/pvol:/data" $image \
    sh -c 'echo from-the-container > /data/f; echo in-root > /written-in-root; cat /data/f'
  step vol-host cat "$dir/pvol/f"
  step root-diff $podman diff pv
  step rm-pv $podman rm pv
  if [ "$mode" = vm ]; then
    # podman's own network (netavark) and -p: the VM joins the namespace
    # podman prepared. Only in the test host, whose network is its own.
    step run-p $podman run -d --cidfile "$dir/cid4" --name pweb -p 8080:80 \
      --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 $annotation $image \
      sh -c 'mkdir -p /srv && echo podman-vm > /srv/index.html && exec httpd -f -p 80 -h /srv'
    poll 300 curl -sf --max-time 2 http://127.0.0.1:8080/
    curl -s --max-time 2 http://127.0.0.1:8080/ > "$o" 2>&1; report curl-p $?
    step rm-p $podman rm -f pweb
    # nothing of the VM's network is left in the host's namespace
    ip -o link show | grep -c -E 'capsa_tap|veth' > "$o"; report links-p 0
  fi
  step ps $podman ps -a --format '{{.Names}}'
  ids=$(cat "$dir"/cid*)
  # what capsa still knows of these containers
  for i in $ids; do "$capsa" state "$i" > /dev/null 2>&1 && echo "$i"; done > "$o"
  report runc-list 0
  step rmi $podman rmi $image
  ;;
*)
  echo "usage: runc_compat.sh CAPSA containerd|podman container|vm DIR" >&2
  exit 2
  ;;
esac

leftovers $ids > "$o"
report leftovers 0
echo "#### done"
