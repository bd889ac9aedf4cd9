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
id=$($c run -d --isolation vm demo sleep 100); sleep 1; pkill -9 capsa-vmm
echo "rc=$($c wait $id)"; $c inspect $id | grep '"error"'; $c rm $id > /dev/null
echo "@@ virtiofsd-killed"
mkdir -p /run/share && echo marker > /run/share/only-this
id=$($c run -d --isolation vm -v /run/share:/data demo sh -c 'while :; do ls /data > /dev/null; sleep 0.1; done')
sleep 2
# the daemon that serves the share: its seccomp mode, what its root holds
# (the volumes, bound in its own mount namespace), and whether its network
# namespace is the host's
for p in $(pgrep -x virtiofsd); do
  [ "$(readlink /proc/$p/ns/net)" = "$(readlink /proc/1/ns/net)" ] && net=host || net=own
  echo "daemon $(grep -E '^Seccomp:' /proc/$p/status | tr -d '\t ') root=$(ls /proc/$p/root | tr '\n' ,) vol0=$(ls /proc/$p/root/0 | tr '\n' ,) net=$net"
done
pkill -9 -x virtiofsd
echo "rc=$(timeout 60 $c wait $id)"; $c inspect $id | grep '"error"'; $c rm $id > /dev/null
echo "@@ leftovers containers=$($c ps -aq | wc -l) vmms=$(pgrep -c capsa-vmm) virtiofsd=$(pgrep -c virtiofsd) mounts=$(grep -c /run/f/ /proc/mounts) sockets=$(ls /run/f/run/sockets 2>/dev/null | wc -l)"
