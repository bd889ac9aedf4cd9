#!/bin/sh
# VM-mode failures, run inside the KVM test host by vm_failures.rs:
#   vm_failures.sh CAPSA EXIT0 (a static program that exits at once)
c="$1 --root /run/f"
$c load --demo >/dev/null || exit 90
echo "@@ agent-timeout"
CAPSA_AGENT=/bin/busybox CAPSA_AGENT_TIMEOUT=5 $c run --rm --isolation vm demo true; echo "rc=$?"
echo "@@ kernel-panic"
CAPSA_AGENT=$2 $c run --rm --isolation vm demo true; echo "rc=$?"
echo "@@ vmm-killed"
id=$($c run -d --isolation vm demo sleep 100); sleep 1
# the VMM's jail, seen from outside: its uid and gid (UID_BASE + its pid),
# capability sets, no_new_privs, seccomp, PID in its own namespace, what its
# root holds, its mounts, the namespaces it shares with the host
p=$(pgrep -x capsa-vmm); want=$((1610612736 + p))
f() { awk -v k="$1:" '$1 == k { $1 = ""; print substr($0, 2) }' /proc/$p/status; }
[ "$(f Uid)" = "$want $want $want $want" ] && uid=own || uid="$(f Uid)"
[ "$(f Gid)" = "$want $want $want $want" ] && gid=own || gid="$(f Gid)"
echo "jail uid=$uid gid=$gid caps=$(f CapPrm),$(f CapEff),$(f CapBnd),$(f CapAmb) nnp=$(f NoNewPrivs) seccomp=$(f Seccomp) nspid=$(f NSpid | awk '{print $NF}') root=$(ls -A /proc/$p/root | wc -l) mounts=$(wc -l < /proc/$p/mountinfo):$(cut -d' ' -f5,6 /proc/$p/mountinfo)"
for ns in mnt net pid ipc uts; do
  [ "$(readlink /proc/$p/ns/$ns)" = "$(readlink /proc/1/ns/$ns)" ] && echo "jail shares the host's $ns namespace"
done
echo "exec in the jailed VM: $($c exec $id echo ok)"
# its cgroup of its own: the guest's memory plus 256 MiB, 128 tasks
cg=$(awk -F: '$1 == "0" { print $3 }' /proc/$p/cgroup)
mem=$(( $(grep -o '"mem_mib": *[0-9]*' /run/f/containers/$id/vm.json | tr -dc 0-9) * 1048576 + 268435456 ))
[ "$(cat /sys/fs/cgroup$cg/memory.max)" = "$mem" ] && mem=guest+256M || mem="$(cat /sys/fs/cgroup$cg/memory.max) vs $mem"
echo "vmm cgroup=$(echo "$cg" | sed "s/$id/ID/") memory=$mem pids=$(cat /sys/fs/cgroup$cg/pids.max)"
pkill -9 capsa-vmm
echo "rc=$($c wait $id)"; $c inspect $id | grep '"error"'; $c rm $id > /dev/null
echo "@@ virtiofsd-killed"
mkdir -p /run/share && echo marker > /run/share/only-this
id=$($c run -d --isolation vm -v /run/share:/data demo sh -c 'touch /data/by-root; while :; do ls /data > /dev/null; sleep 0.1; done')
sleep 2
# the daemon that serves the share: its seccomp mode, what its root holds
# (the volumes, bound in its own mount namespace), whether its network
# namespace is the host's, its user namespace (not the host's: every id
# mapped to itself) and its cgroup (the VM's); the guest's root writes as
# host root, as in container mode
for p in $(pgrep -x virtiofsd); do
  [ "$(readlink /proc/$p/ns/net)" = "$(readlink /proc/1/ns/net)" ] && net=host || net=own
  [ "$(readlink /proc/$p/ns/user)" = "$(readlink /proc/1/ns/user)" ] && userns=host || userns="own:$(awk '{print $1":"$2":"$3}' /proc/$p/uid_map)"
  cg=$(awk -F: '$1 == "0" { print $3 }' /proc/$p/cgroup | sed "s/$id/ID/")
  echo "daemon $(grep -E '^Seccomp:' /proc/$p/status | tr -d '\t ') root=$(ls /proc/$p/root | tr '\n' ,) vol0=$(ls /proc/$p/root/0 | tr '\n' ,) net=$net userns=$userns cgroup=$cg"
done
echo "by-root owner=$(stat -c %u:%g /run/share/by-root)"
pkill -9 -x virtiofsd
echo "rc=$(timeout 60 $c wait $id)"; $c inspect $id | grep '"error"'; $c rm $id > /dev/null
echo "@@ virtiofsd-userns"
# --userns=auto: the share's daemon runs as the container's root (the first
# uid of capsa's range), not the host's; what the container writes is that
# uid's; a host file outside the mapping stays out of its reach
chmod 1777 /run/share; echo secret > /run/share/host-only; chmod 600 /run/share/host-only
id=$($c run -d --isolation vm --userns=auto -v /run/share:/data demo sh -c 'echo w > /data/w; cat /data/host-only 2>&1 | grep -o "Permission denied"; sleep 300')
base=$(grep '^capsa:' /etc/subuid | cut -d: -f2); n=0
until [ -s /run/share/w ] || [ $n -ge 100 ]; do sleep 0.1; n=$((n+1)); done
for p in $(pgrep -x virtiofsd); do
  uid=$(awk '/^Uid:/ {print $2}' /proc/$p/status)
  [ "$uid" = "$base" ] && uid=capsa-base
  [ "$(readlink /proc/$p/ns/user)" = "$(readlink /proc/1/ns/user)" ] && userns=host || userns=own
  echo "daemon uid=$uid userns=$userns $(grep -E '^Seccomp:' /proc/$p/status | tr -d '\t ')"
done
[ "$(stat -c %u /run/share/w)" = "$base" ] && echo "written as capsa-base"
$c logs $id; $c rm -f $id > /dev/null
echo "@@ leftovers containers=$($c ps -aq | wc -l) vmms=$(pgrep -c capsa-vmm) virtiofsd=$(pgrep -c virtiofsd) mounts=$(grep -c /run/f/ /proc/mounts) sockets=$(ls /run/f/run/sockets 2>/dev/null | wc -l) jails=$(grep -c capsa-vmm-jail /proc/mounts) cgroups=$(find /sys/fs/cgroup/capsa -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
