//! Moving bytes between hosts: our SSH client and the copy engine that streams files over it
//! (remote recovery now; sync-backup over SSH and the rsync backup method reuse it).

pub mod agent;
pub mod blocks;
pub mod chunks;
pub mod copy;
pub mod grpc;
pub mod ssh;
pub mod tls;

/// A mutex's guard even when a panicking thread poisoned it (the data stays usable here:
/// queues and counters).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
