#!/bin/sh
# capsa build and push against podman build and skopeo copy, side by side in
# one run (issue #14's benchmark). Prints the median of N rounds and the
# ratios. Needs podman, skopeo and docker-registry (scripts/setup.sh).
#   scripts/bench-build.sh [N]
set -eu
n=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
capsa="$here/target/release/capsa"
work=$(mktemp -d /var/tmp/capsa-bench-build.XXXXXX)
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM
c="$capsa --root $work/capsa"
p="podman --root $work/podman --runroot $work/podman-run --storage-driver overlay --cgroup-manager cgroupfs --events-backend file"

# The 5-step Dockerfile, FROM the demo image, in both stores.
mkdir -p "$work/ctx"
printf 'FROM demo\nRUN echo step > /step && mkdir /app\nCOPY data.bin /app/\nENV MODE=bench\nCMD ["cat", "/step"]\n' > "$work/ctx/Dockerfile"
head -c 5000000 /dev/urandom > "$work/ctx/data.bin"
$c load --demo > /dev/null
$c save -o "$work/demo.tar" demo
$p load -i "$work/demo.tar" > /dev/null 2>&1

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_of() { t0=$(now); "$@" > /dev/null 2>&1; t1=$(now); echo "$t1 - $t0" | bc; }

for i in $(seq "$n"); do
  time_of $c build --no-cache -t b:cold "$work/ctx" >> "$work/capsa-cold"
  time_of $p build --no-cache --network none -t b:cold "$work/ctx" >> "$work/podman-cold"
  time_of $c build -t b:cached "$work/ctx" >> "$work/capsa-cached"
  time_of $p build --network none -t b:cached "$work/ctx" >> "$work/podman-cached"
done

# A 50 MB image pushed to a local registry, fresh each round.
printf 'FROM demo\nCOPY big.bin /big.bin\n' > "$work/ctx/Dockerfile"
head -c 50000000 /dev/urandom > "$work/ctx/big.bin"
$c build -t big:1 "$work/ctx" > /dev/null 2>&1
$c save -o "$work/big.tar" big:1
for i in $(seq "$n"); do
  port=$((15000 + i))
  rm -rf "$work/reg"; mkdir -p "$work/reg"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/reg" "$port" > "$work/reg.yml"
  docker-registry serve "$work/reg.yml" > /dev/null 2>&1 & reg_pid=$!
  until curl -sf "http://127.0.0.1:$port/v2/" > /dev/null; do sleep 0.1; done
  time_of $c push big:1 "127.0.0.1:$port/capsa/big:1" >> "$work/capsa-push"
  time_of skopeo --insecure-policy copy --dest-tls-verify=false "oci-archive:$work/big.tar" "docker://127.0.0.1:$port/skopeo/big:1" >> "$work/skopeo-push"
  kill "$reg_pid"; wait "$reg_pid" 2>/dev/null || true; reg_pid=
done

row() { # label capsa-file peer-file peer-name goal
  a=$(median < "$work/$2"); b=$(median < "$work/$3")
  printf '%-22s capsa %6.3f s   %-7s %6.3f s   ratio %5.2f (goal %s)\n' "$1" "$a" "$4" "$b" "$(echo "$a / $b" | bc -l)" "$5"
}
echo "median of $n rounds"
row "build, cold" capsa-cold podman-cold podman "<= 1"
row "build, all cached" capsa-cached podman-cached podman "<= 0.5"
row "push 50 MB" capsa-push skopeo-push skopeo "<= 1"
