//! The allocator set-up the long-running binaries share.
//!
//! The proxy and the control plane use jemalloc (each declares it as its `#[global_allocator]`)
//! because glibc's malloc keeps what bursts of connections or configuration pushes allocated:
//! a proxy that held 10,000 idle connections kept its 280 MB after they closed (jemalloc: back
//! to 16 MB within ~15 s), and the control plane grew by tens of MB with every weight change
//! pushed to 1,000 proxies.

/// Starts jemalloc's background thread, which returns freed memory to the system over time
/// instead of only when the allocating thread next allocates.
pub fn return_freed_memory_in_background() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background thread is off: freed memory returns to the system more slowly");
    }
}
