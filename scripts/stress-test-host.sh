#!/usr/bin/env bash
# Stress the KVM test host: boot it N times, run VM-mode scenarios in each
# boot, and count how each run ended, keeping the test host's own failures
# apart from the scenarios' failures (exit codes of `capsa test-host`, see
# docs/guest-kernel.md):
#   240 its kernel crashed   241 it hung   242 qemu failed
#   243 time limit           244 the command hung in a live test host
#   other non-zero: a scenario failed (capsa's fault, not the host's)
#
#   scripts/stress-test-host.sh [N]        (default 5)
#
# The setup under test comes from the environment, so setups can be compared
# one after another:
#   CAPSA_TEST_HOST_QEMU=/path/to/qemu-system-x86_64   (default: PATH's)
#   CAPSA_TEST_HOST_ACCEL=tcg,thread=single            (default: tcg)
# and CAPSA_GUEST_KERNEL_ARGS (e.g. loglevel=7) and CAPSA_AGENT_TIMEOUT (seconds
# a guest has to boot; default 60) are passed to capsa inside.
# Each failed run's output and console tail are kept under $STRESS_LOGS
# (default /var/tmp/capsa-stress). Prints one table row at the end.
# Needs the builds of scripts/test.sh (release binaries, static agent).
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
capsa=$PWD/target/release/capsa
logs=${STRESS_LOGS:-/var/tmp/capsa-stress}
mkdir -p "$logs"
[ -x "$capsa" ] || { echo "stress: build first (bash scripts/test.sh or cargo build --release)" >&2; exit 2; }

# Each step says its name on stderr first (the last one names the step that
# failed or hung), and each capsa command has a time limit, so a hang inside
# a live test host ends as a scenario failure that shows every VM's console
# and capsa-vmm log and the processes left.
scenario=$(cat <<EOF
set -u
export CAPSA_GUEST_KERNEL_ARGS="${CAPSA_GUEST_KERNEL_ARGS:-}" CAPSA_AGENT_TIMEOUT="${CAPSA_AGENT_TIMEOUT:-60}"
c="timeout -k 10 240 $capsa --root /run/stress"
diag() {
  echo "--- the test host's kernel messages (tail)" >&2
  dmesg | grep -v 'Unhandled WRMSR' | tail -n 20 >&2
  echo "--- processes" >&2
  ps -eo pid,ppid,stat,etime,args | grep -E 'capsa|PID' | grep -v grep >&2
  for d in /run/stress/containers/*/; do
    [ -d "\$d" ] || continue
    echo "--- \$d console.log (tail)" >&2; tail -n 15 "\$d/console.log" >&2 2>/dev/null
    echo "--- \$d vmm.log" >&2; tail -n 15 "\$d/vmm.log" >&2 2>/dev/null
  done
}
fail() { echo "scenario failed: \$*" >&2; diag; exit 1; }
step() { echo "step: \$*" >&2; }
step load; \$c load --demo >/dev/null || fail "load --demo"
for round in 1 2 3 4 5; do
  step "burst round \$round"
  pids=
  for i in 1 2 3 4; do \$c run --rm --isolation vm demo true & pids="\$pids \$!"; done
  for p in \$pids; do wait \$p || fail "burst round \$round: exit \$?"; done
done
step "run -d"; \$c run -d --isolation vm --name t demo sleep 300 >/dev/null || fail "run -d"
step exec; [ "\$(\$c exec t echo in)" = in ] || fail "exec"
step "exec -t"; \$c exec -t t true || fail "exec -t"
step "20 MB"; [ "\$(\$c run --rm --isolation vm demo sh -c 'head -c 20000000 /dev/zero | tr "\\\\0" x' | wc -c)" = 20000000 ] || fail "20 MB of output"
step oom; \$c run --rm --isolation vm --memory 32m demo dd if=/dev/zero of=/dev/null bs=100M count=1 >/dev/null 2>&1
[ \$? = 137 ] || fail "oom kill"
step stop; \$c stop -t 1 t >/dev/null || fail "stop"
step rm; \$c rm t >/dev/null || fail "rm"
[ "\$(pgrep -c capsa-vmm)" = 0 ] || fail "a capsa-vmm was left"
echo scenario ok
EOF
)

setup="qemu=$("${CAPSA_TEST_HOST_QEMU:-qemu-system-x86_64}" --version | head -1 | grep -o 'version [0-9.]*' | cut -d' ' -f2) accel=${CAPSA_TEST_HOST_ACCEL:-tcg}"
declare -A count=()
for i in $(seq 1 "$n"); do
  start=$(date +%s)
  # The whole console goes into the output, kept for a failed run.
  out=$(CAPSA_TEST_HOST_CONSOLE=1 "$capsa" test-host --timeout 900 -- /bin/bash -c "$scenario" 2>&1)
  code=$?
  secs=$(( $(date +%s) - start ))
  case $code in
    0) kind=ok ;;
    240) kind=crash ;;
    241) kind=host-hung ;;
    242) kind=qemu-failed ;;
    243) kind=time-limit ;;
    244) kind=cmd-hung ;;
    *) kind=scenario-failed ;;
  esac
  count[$kind]=$(( ${count[$kind]:-0} + 1 ))
  echo "stress: run $i/$n: $kind (exit $code, ${secs}s) [$setup]"
  if [ "$kind" != ok ]; then
    f=$logs/run-$(date +%Y%m%d-%H%M%S)-$kind.log
    printf '%s\n' "$setup" "$out" > "$f"
    echo "stress:   $(printf '%s\n' "$out" | grep -m1 -E 'KVM test host|qemu failed|scenario failed|capsa' || true)"
    echo "stress:   last step: $(printf '%s\n' "$out" | grep '^step: ' | tail -n1)"
    echo "stress:   kept in $f"
  fi
done
echo "| setup | runs | ok | scenario failed | kernel crash | host hung | qemu failed | time limit | command hung |"
echo "| $setup | $n | ${count[ok]:-0} | ${count[scenario-failed]:-0} | ${count[crash]:-0} | ${count[host-hung]:-0} | ${count[qemu-failed]:-0} | ${count[time-limit]:-0} | ${count[cmd-hung]:-0} |"
