#!/usr/bin/env bash
# The whole test suite (README command 2; .ci/run calls this). Installs what
# it needs, builds everything once (cached in target/ and the kernel cache),
# and runs every test: unit tests and the integration tests that start real
# containers, a real local registry, and microVMs inside the KVM test host.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: the tests start real containers and VMs: run as root" >&2; exit 1; }
bash scripts/build.sh
cargo test --release --workspace --no-fail-fast -- --test-threads="${CAPSA_TEST_THREADS:-2}"
