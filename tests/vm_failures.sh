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
echo "@@ leftovers containers=$($c ps -aq | wc -l) vmms=$(pgrep -c capsa-vmm) mounts=$(grep -c /run/f/ /proc/mounts) sockets=$(ls /run/f/run/sockets 2>/dev/null | wc -l)"
