//! Phase timings of a container's life, logged at info level
//! (`capsa --log-level info run …`), so the cost of each isolation mode can
//! be broken down: host preparation, VMM start, guest boot, container start,
//! run, teardown.

use std::time::Instant;

/// Logs how long the phase that began at `since` took, and restarts the clock.
pub fn phase(name: &str, since: &mut Instant) {
    let now = Instant::now();
    tracing::info!(
        "phase {name}: {:.1} ms",
        now.duration_since(*since).as_secs_f64() * 1000.0
    );
    *since = now;
}
