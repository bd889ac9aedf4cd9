#!/bin/sh
# Runs each parity case in one isolation mode and prints, per case, one
# result line (exit code, length and hash of stdout and stderr) and a
# preview. The Rust test (parity.rs) runs this once per mode, each in a
# KVM test-host boot of its own, and compares the result lines.
#   parity.sh CAPSA MODE LINKS UDP [PART]
# PART: 1 or 2 runs half of the cases (VM mode's take twice container
# mode's time, so parity.rs splits them over two boots); all by default.
# LINKS: an image archive (links:latest) whose /etc files are symlinks.
# UDP: a directory holding the static helpers udp_echo, xattr and sysprobe
# (tests/helpers/*.c).
capsa=$1 mode=$2 links=$3 udp=$4 part=${5:-all}
in_part() { [ "$part" = all ] || [ "$part" = "$1" ]; }
netleft=0; : > /run/netleft # set by the network cases (part 2)
c="$capsa --root /run/parity-$mode"
# Cases about something else than networking run without a network: the
# default bridge costs about 5 s a run in the test host (netavark's
# iptables calls). Case default-network and the network cases use one.
r="$c run --network none"
$c load --demo >/dev/null || { echo "@@ load failed"; exit 1; }
$c load -i "$links" >/dev/null || { echo "@@ load of $links failed"; exit 1; }
printf 'hello stdin\nsecond line\n' > /run/stdin.txt
: > /run/empty
mkdir -p /run/vol/sub && echo host-file > /run/vol/f && echo deep > /run/vol/sub/g

t0=$(date +%s)
report() { # name code
  printf '@@ %s code=%s out=%s/%s err=%s/%s\n' "$1" "$2" \
    "$(wc -c < /run/o | tr -d ' ')" "$(sha256sum < /run/o | cut -c1-12)" \
    "$(wc -c < /run/e | tr -d ' ')" "$(sha256sum < /run/e | cut -c1-12)"
  printf '   out: %s\n   err: %s\n' "$(head -c 160 /run/o | tr '\n' '|')" "$(head -c 160 /run/e | tr '\n' '|')"
  printf '   at: %ss\n' $(($(date +%s) - t0)) # where a slow run spends its time
}
dir_of() { echo "/run/parity-$mode/containers/$($c inspect -f '{{.Id}}' "$1")"; } # name
why() { # name: why a detached container ended in error (only a failing run's dump shows it)
  err=$($c inspect -f '{{.State.Error}}' "$1" 2>&1)
  [ -n "$err" ] || return 0
  echo "   why $1: $err"
  tail -n 12 "$(dir_of "$1")/console.log" 2>/dev/null | sed 's/^/   console: /'
}
case_in() { # network name stdin-file capsa-run-args...
  net=$1 name=$2 input=$3; shift 3
  $c run --network "$net" --rm --isolation "$mode" --hostname box "$@" > /run/o 2> /run/e < "$input"
  report "$name" $?
}
case_run() { case_in none "$@"; } # name stdin-file capsa-run-args...

if in_part 1; then
case_run echo /run/empty demo echo hello world
for n in 0 1 7; do case_run "exit-$n" /run/empty demo sh -c "exit $n"; done
case_run exit-127 /run/empty demo no-such-command
case_run env /run/empty -e GREETING=hi -e EMPTY= demo sh -c 'env | sort'
case_run user /run/empty -u 1000:1000 demo sh -c 'id -u; id -g; id -G'
case_run user-name /run/empty -u nobody demo id -un
case_run cwd /run/empty -w /tmp demo pwd
case_run cwd-image /run/empty demo pwd
case_run stdin /run/stdin.txt -i demo sh -c 'tr a-z A-Z'
case_run stdout-20mb /run/empty demo sh -c 'head -c 20000000 /dev/zero | tr "\0" x'
case_run tty /run/empty -t demo sh -c 'test -t 0 && test -t 1 && echo is-a-tty'
# what the container deletes goes back to the host's disk (VM mode: the
# guest discards, capsa-vmm punches holes in the container's disk file)
$r -d --isolation "$mode" --name sp demo sh -c 'head -c 60000000 /dev/zero > /big; sync; touch /ready; sleep 300' > /dev/null
n=0; until $c exec sp test -e /ready 2>/dev/null || [ $n -ge 300 ]; do sleep 0.2; n=$((n+1)); done
used() { du -sk "$(dir_of sp)" | cut -f1; }
full=$(used); $c exec sp sh -c 'rm /big; sync'; sleep 1; freed=$(used)
{ [ "$full" -gt 50000 ] && echo written; [ "$freed" -lt $((full / 2)) ] && echo given-back; $c rm -f sp; } > /run/o 2> /run/e
report space-back 0
# a bind of /sys or /proc is of the kernel's own (VM mode: the guest's)
case_run kernel-fs /run/empty -v /sys:/hs:ro -v /proc:/hp:ro demo sh -c 'test -d /hs/class && test -r /hp/self/status && echo kernel-fs'
# the container's writes go to disk in both modes, not to the VM's memory
case_run write-big /run/empty demo sh -c 'head -c 150000000 /dev/zero > /big && wc -c < /big'
# --storage-opt size (#15): the writable layer is a disk of that size in
# both modes; a write past it fails, and what was deleted is room again
case_run storage-size /run/empty --storage-opt size=32m demo sh -c 'head -c 50000000 /dev/zero > /big; echo rc=$?
  test $(wc -c < /big) -lt 33554432 && echo bounded; rm /big; head -c 20000000 /dev/zero > /again && echo room-again'
case_run volume-ro /run/empty -v /run/vol:/data:ro demo sh -c 'cat /data/f /data/sub/g; touch /data/x'
case_run stderr /run/empty demo sh -c 'echo to-err >&2; echo to-out'
# device nodes an image carries (the memory, a disk) open nothing, and
# mknod is refused (tests/escapes.rs)
case_run device-nodes /run/empty links sh -c 'for d in /mem /disk; do head -c 1 $d > /dev/null 2>&1 && echo "$d opened" || echo "$d refused"; done
  mknod /made c 1 1 2>/dev/null && echo mknod worked || echo mknod refused'
# the container cannot raise its own limits through /sys/fs/cgroup
case_run cgroup-ro /run/empty --pids-limit 50 demo sh -c 'for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do [ -e $f ] || continue
  echo max > $f 2>/dev/null && echo raised || echo kept; cat $f; done'
# a container of its own network namespace (--network none) has a working
# lo: a server on localhost answers
case_run loopback /run/empty demo sh -c 'nc -l -p 8000 -e echo hi & i=0
  until nc 127.0.0.1 8000 2>/dev/null || [ $i -ge 20 ]; do sleep 0.2; i=$((i+1)); done; ip -o addr show lo | grep -c inet'
# read-write volumes (#12): the container's changes are on the host, with
# their owners, modes and links; a host change is seen inside; a non-root
# user gets the host's permissions
rm -rf /run/rw && mkdir -p /run/rw && echo from-host > /run/rw/in && echo secret > /run/rw/secret && chmod 600 /run/rw/secret
$r --rm --isolation "$mode" -v /run/rw:/data demo sh -c 'cat /data/in; echo out > /data/out; mkdir /data/d; echo x > /data/d/a;
  mv /data/d/a /data/d/b; ln /data/d/b /data/hard; ln -s d/b /data/sym; chmod 640 /data/out; chown 1000:1000 /data/d /data/out;
  rm /data/in; sync /data/out' > /run/o 2> /run/e; code=$?
(cd /run/rw && find . | sort | while read -r f; do stat -c '%n %a %u:%g %h' "$f"; done; cat out; readlink sym) >> /run/o
report volume-rw "$code"
chown 1000:1000 /run/rw
case_run volume-user /run/empty -u 1000:1000 -v /run/rw:/data demo sh -c 'id -u; echo mine > /data/mine; stat -c "%u:%g %a" /data/mine; cat /data/secret'
rm -rf /run/rw2 && mkdir -p /run/rw2
$r -d --isolation "$mode" --name watcher -v /run/rw2:/data demo sh -c 'echo ready > /data/ready; i=0
  while [ ! -e /data/from-host ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; cat /data/from-host; echo seen > /data/ack' > /dev/null 2> /run/d-err
i=0; while [ ! -e /run/rw2/ready ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo hello-from-host > /run/rw2/from-host
$c wait watcher > /run/o 2> /run/e; $c logs watcher >> /run/o 2>> /run/e; cat /run/rw2/ack >> /run/o
report volume-host-change 0; why watcher; cat /run/d-err; $c rm watcher > /dev/null
# a share names nothing outside itself: symlinks left in it (absolute,
# relative, deep) and .. resolve in the container's own root, a hard link
# out of it is refused, and a setuid file on it gives no privilege
rm -rf /run/esc && mkdir -p /run/esc && echo outside-secret > /run/outside
ln -s /run/outside /run/esc/abs; ln -s ../outside /run/esc/rel; ln -s ../../../../../../../run/outside /run/esc/deep
cp /bin/busybox /run/esc/busybox && chmod 4755 /run/esc/busybox
case_run volume-escape /run/empty -v /run/esc:/data demo sh -c 'ln /etc/passwd /data/pw
  for f in abs rel deep ../outside ../../run/outside; do cat /data/$f 2>/dev/null || echo "no $f"; done; ls /data/.. | head -3'
case_run volume-setuid /run/empty -u 1000:1000 -v /run/esc:/data demo /data/busybox id -u
# a share on a disk file system (the test host's ext4 scratch disk):
# extended attributes both ways, and a directory of 300 files deleted while
# it is listed (rm -rf)
rm -rf /mnt/scratch/x && mkdir -p /mnt/scratch/x
$r --rm --isolation "$mode" -v /mnt/scratch/x:/data -v "$udp":/opt/h:ro demo sh -c 'echo f > /data/f
  /opt/h/xattr set /data/f user.model resnet && /opt/h/xattr get /data/f user.model
  mkdir /data/t; i=0; while [ $i -lt 300 ]; do : > /data/t/f$i; i=$((i+1)); done; rm -rf /data/t && echo tree-gone' > /run/o 2> /run/e; code=$?
"$udp"/xattr get /mnt/scratch/x/f user.model >> /run/o 2>> /run/e; ls /mnt/scratch/x >> /run/o
report volume-disk "$code"
# --userns=auto (#15): root in the container is a host uid of its own
# (the first of capsa's range), which owns the image's files inside and
# what it writes to a host directory outside; an exec'd process joins it.
# The store is on the scratch disk: the test host's tmpfs cannot be idmapped.
u="$capsa --root /mnt/scratch/uns-$mode"
$u load --demo >/dev/null
rm -rf /run/uns && mkdir -p /run/uns && chmod 1777 /run/uns
$u run --rm --isolation "$mode" --network none --userns=auto -v /run/uns:/data demo sh -c 'id -u; awk "{print \$1, \$3}" /proc/self/uid_map
  stat -c %u:%g /etc/passwd; echo x >> /etc/passwd && echo copied-up; echo hi > /data/f' > /run/o 2> /run/e; code=$?
[ "$(stat -c %u:%g /run/uns/f)" = "$(grep '^capsa:' /etc/subuid | cut -d: -f2):$(grep '^capsa:' /etc/subgid | cut -d: -f2)" ] && echo host-owner-mapped >> /run/o
report userns "$code"
$u run -d --isolation "$mode" --network none --name uns --userns=auto demo sleep 300 > /dev/null
$u exec uns sh -c 'id -u; awk "{print \$1, \$3}" /proc/self/uid_map; grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status' > /run/o 2> /run/e; code=$?
$u exec -u 1000 uns sh -c 'id -u; grep CapEff /proc/self/status' >> /run/o 2>> /run/e
report userns-exec "$code"; why uns
$u rm -f uns > /dev/null
# -v options: U gives the source to the container's user (through its user
# namespace, here the range podman's --uidmap gives: 900000 + 1000 on the
# host), noexec and nosuid reach the mount, nocopy leaves a new named
# volume empty
rm -rf /run/vo && mkdir -p /run/vo/sub && echo x > /run/vo/sub/f && cp /bin/busybox /run/vo/bb
$u run --rm --isolation "$mode" --network none --uidmap 0:900000:65536 -u 1000:1000 -v /run/vo:/data:U,noexec,nosuid -v novol:/home:nocopy demo sh -c 'stat -c %u:%g /data/sub/f; echo w > /data/w && echo wrote
  /data/bb true 2>/dev/null || echo no-exec; grep " /data " /proc/self/mounts | grep -o "noexec\|nosuid" | sort -u | tr "\n" " "; ls -A /home; echo end' > /run/o 2> /run/e; code=$?
[ "$(stat -c %u:%g /run/vo/sub/f /run/vo/w | sort -u)" = "901000:901000" ] && echo host-owner-user >> /run/o
report volume-options "$code"
$u volume rm novol > /dev/null
# many volumes (#12): VM mode gathers them in one share; each stays a
# mount of its own (no hard link from one to another), read-only all the
# way down (a mount inside a read-only volume too)
vs=""; for i in 0 1 2 3 4 5 6 7; do rm -rf /run/m$i; mkdir -p /run/m$i; echo host$i > /run/m$i/f; done
for i in 0 1 2 3 4 5; do vs="$vs -v /run/m$i:/m$i"; done
mkdir -p /run/m7/sub && mount -t tmpfs many /run/m7/sub && echo inner > /run/m7/sub/x
$r --rm --isolation "$mode" $vs -v /run/m6:/m6:ro -v /run/m7:/m7:ro demo sh -c 'for i in 0 1 2 3 4 5 6 7; do
  printf "%s" "$(cat /m$i/f)"; (echo w > /m$i/w) 2>/dev/null && printf "+ " || printf "- "; done; echo
  cat /m7/sub/x; touch /m7/sub/y 2>/dev/null || echo sub-ro; ln /m0/f /m1/hard 2>/dev/null || echo no-link
  mv /m0/f /m1/moved && echo moved' > /run/o 2> /run/e; code=$?
ls /run/m0 /run/m1 /run/m5 /run/m6 | tr '\n' ' ' >> /run/o; umount /run/m7/sub
report volume-many "$code"
# named volumes: filled from the image's files on first use, kept across
# containers, removed once unused
{ $r --rm --isolation "$mode" -v pvol:/home demo sh -c 'stat -c "%U %a" /home/user; echo kept > /home/note'
  $r --rm --isolation "$mode" -v pvol:/data:ro demo cat /data/note; $c volume rm pvol; } > /run/o 2> /run/e
report volume-named $?
case_run read-only-root /run/empty --read-only demo touch /x
# One process fills a 100 MB buffer, so the OOM killer's victim is certain.
case_run oom /run/empty --memory 32m demo dd if=/dev/zero of=/dev/null bs=100M count=1
$r --isolation "$mode" --name oomer --memory 32m demo dd if=/dev/zero of=/dev/null bs=100M count=1 > /dev/null 2>&1
$c inspect oomer | grep '"oom_killed"' | tr -d ' ,' > /run/o; : > /run/e
report oom-reported 0; $c rm oomer > /dev/null
# the syscalls podman's profile blocks are refused (EPERM) in both modes
case_run syscalls /run/empty -v "$udp":/opt/h:ro demo /opt/h/sysprobe
case_run limits /run/empty --pids-limit 64 demo sh -c 'ulimit -n; cat /proc/self/status | grep -E "^(CapEff|NoNewPrivs|Seccomp):"'
# the user's opt-outs: podman's own profile file, and --privileged (VM mode:
# privileged over the guest kernel)
case_run seccomp-file /run/empty --security-opt seccomp=/usr/share/containers/seccomp.json -v "$udp":/opt/h:ro demo /opt/h/sysprobe
case_run privileged /run/empty --privileged demo sh -c 'grep -E "^(CapEff|Seccomp):" /proc/self/status; mkdir /m && mount -t tmpfs t /m && echo mounted'

# stop: SIGTERM first; a shell that ignores it is killed after the timeout.
$r -d --isolation "$mode" --name stopper demo sh -c 'trap "echo got-term; exit 3" TERM; echo ready; while :; do sleep 0.1; done' > /dev/null
sleep 1; $c stop -t 5 stopper > /dev/null; $c wait stopper > /run/o 2> /run/e; $c logs stopper >> /run/o 2>> /run/e
report stop-term 0; $c rm stopper > /dev/null
$r -d --isolation "$mode" --name stubborn demo sh -c 'trap "" TERM; while :; do sleep 0.1; done' > /dev/null
sleep 1; $c stop -t 1 stubborn > /dev/null; $c wait stubborn > /run/o 2> /run/e
report stop-kill 0; $c rm stubborn > /dev/null

# pause/unpause: frozen (exec refused), thawed, and removed while paused
$r -d --isolation "$mode" --name pz demo sleep 300 > /dev/null
{ $c pause pz; $c ps | grep -c '(Paused)'; $c exec pz true; echo "exec=$?"; $c unpause pz; $c exec pz echo back
  $c pause pz; $c rm -f pz; } > /run/o 2> /run/e
report pause 0

# stats and top: the limit, PIDs, a busy CPU, block I/O counted (VM mode:
# the guest's io controller), the processes' commands
$r -d --isolation "$mode" --name st -m 96m demo sh -c 'while :; do :; done' > /dev/null
{ $c stats --no-stream --format '{{.Name}} {{.MemUsage}} {{.PIDs}} {{.CPUPerc}} {{.BlockIO}}' st |
    awk '{ sub(/^[0-9.]+[KMG]?i?B$/, "U", $2); $6 = ($6 + 0 > 5) ? "busy" : "idle:" $6
      b = ($7 ~ /^[0-9.]+[kMG]?B$/ && $9 ~ /^[0-9.]+[kMG]?B$/) ? "blk" : "blk:" $7
      print $1, $2, $3, $4, $5, $6, b }'
  $c top st | awk '{ print $1, $8, $9, $10 }'; $c rm -f st; } > /run/o 2> /run/e
report stats-top 0

# update: new limits reach the running container (its cgroup in the guest)
$r -d --isolation "$mode" --name up -m 96m demo sleep 300 > /dev/null
{ $c update -m 128m --pids-limit 50 up; $c stats --no-stream --format '{{.MemUsage}}' up | sed 's/^[^ ]* /U /'
  $c inspect -f '{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}' up; $c exec up cat /sys/fs/cgroup/pids.max; $c rm -f up; } > /run/o 2> /run/e
report update 0

# cp both ways through the container's own tar (VM mode: through the agent)
mkdir -p /run/cpsrc/d && echo cp-in > /run/cpsrc/d/f && rm -rf "/run/cpout-$mode" && mkdir "/run/cpout-$mode"
$r -d --isolation "$mode" --name cpy demo sleep 300 > /dev/null
{ $c cp /run/cpsrc/d cpy:/tmp; $c exec cpy cat /tmp/d/f; $c exec cpy sh -c 'echo cp-out > /tmp/d/g'
  $c cp cpy:/tmp/d "/run/cpout-$mode/back"; cat "/run/cpout-$mode/back/f" "/run/cpout-$mode/back/g"; $c rm -f cpy; } > /run/o 2> /run/e
report cp 0

# commit: the container's changes (a deletion too) as a layer of a new
# image, which runs (VM mode: the agent writes the layer in the guest)
$r -d --isolation "$mode" --name cm demo sh -c 'echo data > /added; rm /etc/group; touch /ready; sleep 300' > /dev/null
n=0; until $c exec cm test -e /ready 2>/dev/null || [ $n -ge 150 ]; do sleep 0.2; n=$((n+1)); done
{ $c commit -c 'CMD ["cat", "/added"]' cm "snap-$mode" | cut -c1-7; $c exec cm echo running
  $r --rm --isolation "$mode" "snap-$mode"; $r --rm --isolation "$mode" "snap-$mode" sh -c 'test -e /etc/group || echo no-group'
  $c rm -f cm; $c rmi "snap-$mode" > /dev/null; } > /run/o 2> /run/e
report commit 0

# cp and commit of a stopped container (VM mode: its VM booted again, the
# container idle in it, its command not run): -a keeps the owner, -L
# follows the link, and what cp put in is in the committed layer; a copy
# into its volume lands in the volume, as docker's does
rm -rf "/run/cps-$mode" && mkdir "/run/cps-$mode"
$r --isolation "$mode" --name cps -v "cpsvol-$mode:/vol" demo sh -c 'echo made > /made; chown 1000:1000 /made; ln -s /made /madelink; echo vol > /vol/v'
{ o=/run/cps-$mode; $c cp cps:/made "$o/plain"; $c cp -a cps:/made "$o/kept"; $c cp -L cps:/madelink "$o/followed"; $c cp cps:/madelink "$o/link"
  cd "$o" && stat -c '%n %u %F' plain kept followed link; cd /
  $c cp /run/cpsrc/d cps:/tmp; $c commit cps "cps-$mode" | cut -c1-7
  $r --rm --isolation "$mode" "cps-$mode" sh -c 'cat /made /tmp/d/f; stat -c "%u %F" /made /madelink'
  $c cp /run/cpsrc/d cps:/vol; $r --rm --isolation "$mode" -v "cpsvol-$mode:/vol" demo cat /vol/v /vol/d/f
  $c rm cps; $c rmi "cps-$mode" > /dev/null; $c volume rm "cpsvol-$mode" > /dev/null; } > /run/o 2> /run/e
report cp-stopped 0

# OCI hooks through runc's command line: createRuntime, prestart,
# poststart and poststop run on the host in both modes (VM mode: as Kata
# runs them), each reading the state; a failing prestart fails create
b=/run/hooks-$mode && rm -rf "$b" && mkdir -p "$b/rootfs/bin" && cp /bin/busybox "$b/rootfs/bin/" && ln -s busybox "$b/rootfs/bin/sh"
(cd "$b" && $capsa spec) && python3 - "$b" "$mode" <<'PY'
import json, sys
b, mode = sys.argv[1], sys.argv[2]
c = json.load(open(b + '/config.json'))
c['process'].update(args=['sh', '-c', 'echo ran'], terminal=False)
c['hooks'] = {k: [{'path': '/bin/sh', 'args': ['sh', '-c', 'cat > %s/%s.json' % (b, k)]}]
              for k in ['createRuntime', 'prestart', 'poststart', 'poststop']}
c['annotations'] = {'io.capsa.isolation': mode}
json.dump(c, open(b + '/config.json', 'w'))
c['hooks']['prestart'] = [{'path': '/bin/sh', 'args': ['sh', '-c', 'echo no >&2; exit 3']}]
json.dump(c, open(b + '/failing.json', 'w'))
PY
seen() { for h in createRuntime prestart poststart poststop; do [ -f "$b/$h.json" ] && printf '%s:%s ' "$h" "$(grep -o '"status": *"[a-z]*"' "$b/$h.json" | cut -d'"' -f4)"; done; echo; }
{ $c create -b "$b" hk; $c start hk; n=0; until $c state hk | grep -q '"stopped"' || [ $n -ge 300 ]; do sleep 0.1; n=$((n+1)); done
  $c delete hk; seen; mv "$b/failing.json" "$b/config.json"
  $c create -b "$b" hk2 > /dev/null 2>&1; echo "failing-prestart=$?"; $c state hk2 > /dev/null 2>&1; echo "state=$?"; } > /run/o 2> /run/e
report hooks 0

# start and restart: the container runs again, its log and its own writes
# kept (VM mode: on its writable disk); start -a gives the exit code
lines() { n=0; while [ "$($c logs "$1" | wc -l)" -lt "$2" ] && [ $n -lt 150 ]; do sleep 0.2; n=$((n+1)); done; }
$r -d --isolation "$mode" --name rs demo sh -c 'echo run >> /kept; echo started $(wc -l < /kept); sleep 300' > /dev/null
{ lines rs 1; $c restart -t 1 rs; lines rs 2; $c logs rs; $c exec rs echo in; $c rm -f rs
  $r --isolation "$mode" --name sa demo sh -c 'echo said; exit 3'; $c start -a sa; echo "start-a=$?"; $c rm sa; } > /run/o 2> /run/e
report restart 0

# a restart policy starts a failing container once more (a new VM in VM mode)
$r -d --isolation "$mode" --name again --restart on-failure:1 demo sh -c 'echo run; exit 3' > /dev/null
n=0; until [ "$($c inspect -f '{{.RestartCount}} {{.State.Status}}' again)" = "1 exited" ] || [ $n -ge 600 ]; do sleep 0.1; n=$((n+1)); done
{ $c logs again; $c inspect -f '{{.RestartCount}} {{.State.ExitCode}}' again; } > /run/o 2> /run/e
report restart-policy 0; $c rm -f again > /dev/null

# healthchecks, exec'd in the container by capsa: unhealthy after the
# retries, healthy once the test passes; a test past its timeout is killed
hs() { n=0; until [ "$($c inspect -f '{{.State.Health.Status}}' "$1")" = "$2" ] || [ $n -ge 300 ]; do sleep 0.1; n=$((n+1)); done; $c inspect -f '{{.State.Health.Status}}' "$1"; }
$r -d --isolation "$mode" --name hc --health-cmd 'test -f /tmp/ok' --health-interval 300ms --health-retries 2 demo sleep 300 > /dev/null
{ hs hc unhealthy; $c exec hc touch /tmp/ok; hs hc healthy; $c ps --filter health=healthy --format '{{.Names}}'; $c rm -f hc
  $r -d --isolation "$mode" --name hslow --health-cmd 'sleep 47' --health-timeout 300ms --health-interval 300ms --health-retries 2 demo sleep 300 > /dev/null
  hs hslow unhealthy; $c inspect -f '{{json .State.Health.Log}}' hslow | grep -q 'exceeded timeout' && echo timed-out
  [ "$($c exec hslow sh -c 'ps | grep -c "[s]leep 47"')" -le 1 ] && echo killed; $c rm -f hslow; } > /run/o 2> /run/e
report health 0

# docker's --mount (a tmpfs here) and --shm-size size the same mounts in both modes
$r --rm --isolation "$mode" --mount type=tmpfs,dst=/t,tmpfs-size=1m --shm-size 96m demo sh -c 'for m in /t /dev/shm; do grep " $m " /proc/mounts | grep -o "size=[0-9]*k"; done' > /run/o 2> /run/e
report mount-long $?

# --ulimit: the limits the container's process has, in both modes
$r --rm --isolation "$mode" --ulimit nofile=2048:4096 --ulimit core=-1 demo sh -c "awk '/^Max open files/ {print \$4, \$5} /^Max core file size/ {print \$5, \$6}' /proc/self/limits" > /run/o 2> /run/e
report ulimit $?

# a killed monitor loses no exit status: its keeper collects it
$r -d --isolation "$mode" --name keeperjob -v /run/vol:/data:ro demo sh -c 'sleep 3; exit 7' > /dev/null
kill -9 "$($c inspect keeperjob | grep '"monitor_pid"' | tr -dc 0-9)"
$c wait keeperjob > /run/o 2> /run/e
$c inspect keeperjob | grep -E '"(status|exit_code)"' | tr -d ' ,' >> /run/o
report monitor-killed 0; $c rm keeperjob > /dev/null

# the writable layer belongs to one container
$r --isolation "$mode" --name writer demo sh -c 'echo data > /tmp/f' > /dev/null
$c rm writer > /dev/null
case_run tmp-gone-after-rm /run/empty demo cat /tmp/f
fi

if in_part 2; then
# a missing working directory is made in the container's root (docker's
# rule); one that cannot be made is named
case_run cwd-created /run/empty -w /new/deeper demo sh -c 'pwd; stat -c %u:%g:%a .'
$r --rm --isolation "$mode" -w /etc/passwd/x demo true > /run/o 2> /run/e; code=$?
grep -c 'working directory /etc/passwd/x .*/etc/passwd is not a directory' /run/e > /run/o; : > /run/e
report cwd-through-file "$code"
# /etc/hosts, /etc/hostname and /etc/resolv.conf that are symlinks (to
# nowhere) are followed inside the container's root
case_run add-host /run/empty --add-host db:10.1.2.3 --add-host v6:fd00::1 demo grep -E '^(10.1.2.3|fd00::1)' /etc/hosts
# without --network a container is on docker's default network, bridge,
# and host-gateway names the host's address on it
$c run --rm --isolation "$mode" --add-host gw:host-gateway demo sh -c 'ls /sys/class/net; ip route | grep -c "^default via"
  grep -c "^10\.89\.[0-9]*\.1[[:space:]]gw$" /etc/hosts' > /run/o 2> /run/e
report default-network $?
case_run etc-links /run/empty links sh -c 'cat /etc/hostname /etc/hosts /run/capsa-hostname; ls -l /etc/resolv.conf | grep -c stub-resolv'

# exec into a running container
$r -d --isolation "$mode" --name target demo sleep 300 > /dev/null
$c exec target sh -c 'echo in-exec; exit 4' > /run/o 2> /run/e; code=$?
report exec "$code"
# an exec'd process is confined exactly as the container's first process
$c exec target sh -c 'for p in 1 self; do grep -E "^(Seccomp|NoNewPrivs|CapEff):" /proc/$p/status; done; unshare -U -r true' > /run/o 2> /run/e; report exec-confined $?
printf 'piped' | $c exec -i target cat > /run/o 2> /run/e; report exec-stdin $?
$c exec -t target sh -c 'test -t 0 && test -t 1 && echo exec-tty; exit 5' > /run/o 2> /run/e; report exec-tty $?
# exec -d: capsa returns at once; the process runs on, confined as any
# exec'd one, with the null device for its streams
# (it waits for /tmp/go, made only after capsa returned: no timing)
{ $c exec -d target sh -c 'until [ -e /tmp/go ]; do sleep 0.1; done; o=$(readlink /proc/$$/fd/1); { grep -E "^(NoNewPrivs|Seccomp):" /proc/self/status; echo $o; } > /tmp/d1; mv /tmp/d1 /tmp/det; echo dropped'
  echo "rc=$?"; $c exec target test -e /tmp/det && echo too-soon; $c exec target touch /tmp/go
  n=0; until $c exec target test -e /tmp/det 2>/dev/null || [ $n -ge 100 ]; do sleep 0.2; n=$((n+1)); done
  $c exec target cat /tmp/det; } > /run/o 2> /run/e; report exec-detached $?
$c rm -f target > /dev/null

# networks: the same flags give the same result (issue #11). The test host
# is this script's whole world: 192.0.2.10 on a veth stands for the host's
# other address; no traffic leaves the test host.
ip link add tveth0 type veth peer name tveth1 2>/dev/null
ip addr add 192.0.2.10/24 dev tveth0 2>/dev/null
ip link set tveth0 up; ip link set tveth1 up
page() { echo "mkdir -p /srv && echo $1 > /srv/index.html && exec httpd -f -p 80 -h /srv"; }
fetch() { # curl, while the server comes up
  i=0; while [ $i -lt 80 ]; do curl -sf --max-time 2 "$1" && return 0; i=$((i+1)); sleep 0.25; done; return 1
}
get() { # a container's page, by name, from inside another (busybox), while it comes up
  echo "i=0; while [ \$i -lt 40 ]; do ip=\$(nslookup $1 2>/dev/null | sed -n 's/^Address: //p' | tail -1); \
[ -n \"\$ip\" ] && r=\$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 \$ip 80 | sed '1,/^\r\$/d') && [ -n \"\$r\" ] && break; \
i=\$((i+1)); sleep 0.25; done; echo \"\$r\""
}
$c run -d --isolation "$mode" --name web -p 8080:80 demo sh -c "$(page served)" > /dev/null
{ fetch http://127.0.0.1:8080/; fetch http://192.0.2.10:8080/; $c port web; } > /run/o 2> /run/e
report net-publish $?
$c rm -f web > /dev/null
$c run -d --isolation "$mode" --name udp -p 5353:53/udp -v "$udp":/opt/udp:ro demo /opt/udp/udp_echo serve 53 > /dev/null
{ "$udp"/udp_echo ask 127.0.0.1 5353 lo; "$udp"/udp_echo ask 192.0.2.10 5353 other; $c port udp; } > /run/o 2> /run/e
report net-publish-udp $?
$c rm -f udp > /dev/null
$c network create --subnet 10.99.1.0/24 pn1 > /dev/null
$c network create --subnet 10.99.2.0/24 pn2 > /dev/null
$c run -d --isolation "$mode" --network pn1 --network-alias alias-a --name a demo sh -c "$(page from-a)" > /dev/null
case_in pn1 net-names /run/empty demo sh -c "$(get a); $(get alias-a)"
aip=$($c exec a ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
case_in pn2 net-isolated /run/empty demo sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $aip 80 || echo unreachable"
# a running container joins a network and leaves it (VM mode: a spare NIC
# its VM booted with comes into the guest's sight and goes), twice
$c run -d --isolation "$mode" --network pn2 --name b demo sleep 300 > /dev/null
on_pn1() { $c exec b sh -c "ls /sys/class/net | tr '\n' ' '; ip -4 -o addr show eth1 | awk '{print \$4}' | cut -d. -f1-3; grep -c nameserver /etc/resolv.conf; printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $aip 80 | tail -1"; }
off_pn1() { $c exec b sh -c "ls /sys/class/net | tr '\n' ' '; grep -c nameserver /etc/resolv.conf; printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $aip 80 || echo unreachable"; }
{ $c network connect pn1 b && on_pn1 && $c network disconnect pn1 b && off_pn1 && \
  $c network connect pn1 b && on_pn1; } > /run/o 2> /run/e
report net-connect $?
$c rm -f b > /dev/null
case_in pn1 net-ip-mac /run/empty --ip 10.99.1.50 --mac-address 02:42:0a:63:01:32 --add-host db:10.1.2.3 demo \
  sh -c 'cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | awk "{print \$4}"; grep -E "box|db" /etc/hosts; grep nameserver /etc/resolv.conf; ip route | grep -c "^default via 10.99.1.1 dev eth0"'
timeout 30 busybox nc -l -p 9000 > /run/got & srv=$!
$c run --rm --isolation "$mode" --network pn2 demo sh -c 'sleep 1; echo hi-host | nc -w 2 192.0.2.10 9000; echo sent' > /run/o 2> /run/e; code=$?
wait $srv; cat /run/got >> /run/o; report net-egress "$code"
# a VMM that crashes (VM mode) or an init killed (container mode): the
# cleanup leaves no tap, veth, rule or lease (the leftovers line below)
$c run -d --isolation "$mode" --name crash --network pn1 -p 8090:80 demo sleep 300 > /dev/null
kill -9 "$($c inspect crash | grep '"pid"' | tr -dc 0-9)"
$c wait crash > /dev/null 2>&1; $c rm crash > /run/o 2> /run/e
report net-crash $?
$c rm -f a > /dev/null
$c network rm pn1 pn2 > /dev/null
# what networking leaves: netns, links other than the test's, leases, rules
# (the default bridge capsa0 stays up, as docker0, with its holder port and
# its loopback guard)
{ ip netns ls; ip -o link show | awk -F': ' '{print $2}' | grep -v -E '^(lo|tveth[01].*|capsa0|capsa0-keep)$'; \
  find /run/capsa/net/ipam -type f ! -name lock ! -name 'last_reserved_ip*' 2>/dev/null; \
  iptables-save | grep -E '10\.99\.|NETAVARK-DN-|capsa:' | grep -v -e '-i capsa0 .*capsa: no host loopback'; } > /run/netleft
netleft=$(wc -l < /run/netleft)

# capsa build (#14): RUN steps in this mode's isolation; with one epoch
# both modes make the same image, bit for bit (the same IDs in the
# progress), and it runs
mkdir -p /run/bctx && echo x > /run/bctx/f
printf 'FROM demo\nENV WHO=parity\nCOPY f /app/f\nRUN echo "built for $WHO" > /app/built && rm /app/f && mkdir /app/d\nCMD ["cat", "/app/built"]\n' > /run/bctx/Dockerfile
$c build --isolation "$mode" --source-date-epoch 1700000000 -t built:p /run/bctx > /run/o 2> /run/e
report build $?
case_run build-run /run/empty built:p

# capsa compose (#14): the seeds' setup with "processing" in this mode's
# isolation: it waits for dev to be healthy, reads the shared directory,
# reaches dev by name, writes its result back; down leaves nothing
rm -rf /run/proj && mkdir -p /run/proj/work && printf 'a\nb\nc\n' > /run/proj/work/data.csv
cat > /run/proj/compose.yaml <<EOF
name: seeds
services:
  dev:
    image: demo
    command: sh -c 'mkdir -p /srv && echo notebook > /srv/index.html && exec httpd -f -p 8888 -h /srv'
    ports: ["127.0.0.1:18890:8888"]
    volumes: ["./work:/work"]
    healthcheck: {test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8888/"], interval: 1s, retries: 60}
  processing:
    image: demo
    command: ["sh", "-c", "wc -l < /work/data.csv > /work/result.txt; wget -q -O- http://dev:8888/ >> /work/result.txt"]
    x-capsa: {isolation: $mode}
    volumes: ["./work:/work"]
    depends_on: {dev: {condition: service_healthy}}
EOF
{ (cd /run/proj && $c compose up -d 2>/dev/null) && $c wait seeds-processing-1 && cat /run/proj/work/result.txt &&
  curl -s --max-time 5 http://127.0.0.1:18890/ && (cd /run/proj && $c compose down 2>/dev/null) && $c ps -aq | wc -l; } > /run/o 2> /run/e
report compose $?

# capsa compare (#14): one image and command in both modes side by side
# (both modes in each pass); the same output, and a VM's devices named
$c compare --json --plot /run/cmp.svg demo sh -c 'echo hello' > /run/cmp.json 2> /run/e; code=$?
{ grep -E '"(same_output|same_exit_code|in_test_host)"' /run/cmp.json | tr -d ' ,'; grep -c 'virtio-blk' /run/cmp.json
  grep -c '<rect' /run/cmp.svg; } > /run/o
report compare "$code"

fi
# nothing left behind
left=$($c ps -aq | wc -l)
echo "@@ leftovers containers=$left mounts=$(grep -c parity-$mode /proc/mounts) vmms=$(pgrep -c capsa-vmm) virtiofsd=$(pgrep -c virtiofsd) net=$netleft"
printf '   left: %s\n' "$(tr '\n' '|' < /run/netleft)"
