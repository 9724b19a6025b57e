//! The node's clock: CLOCK_MONOTONIC in milliseconds. Leases are measured on it, and the
//! streaming intervals in the log carry it, so that intervals logged by nodes on one
//! machine (test harnesses) compare directly.

/// Milliseconds of CLOCK_MONOTONIC.
pub fn mono_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}
