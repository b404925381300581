//! The runtime the proxy's traffic runs on: one thread per core it may use
//! (`PILLION_CORES`), and optionally busy polling (`PILLION_BUSY_POLL`).
//!
//! Busy polling: before a runtime thread goes to sleep in `epoll_wait`, it first watches the
//! runtime's epoll descriptor for up to the given time. On a virtual machine a CPU with nothing
//! to run halts, and waking it again is an exit to the host: tens of microseconds on the
//! request path (docs/benchmarks.md, session 18). A proxy waits twice a request, for the
//! request and for the endpoint's answer, which on one node comes back within tens of
//! microseconds; spinning through such waits keeps the CPU awake, and the answer is forwarded
//! the moment it arrives. The price is CPU spent spinning while idle, so it is off by default,
//! for latency-sensitive workloads with CPU to spare (HAProxy's `busy-polling` makes the same
//! trade).
//!
//! Tokio gives no way to poll its I/O driver from outside, but an epoll descriptor is itself
//! pollable: readable while events wait in it. `poll(2)` on it with a zero timeout takes none
//! of them, so tokio's own `epoll_wait`, right after, finds them all. The descriptors are the
//! `[eventpoll]` ones that building the runtime opened (tokio keeps a duplicate for its signal
//! handling: both are watched). A wake-up from another thread, or a timer, also ends the spin:
//! the first writes to an eventfd in the same epoll set, the second is at most one spin late.

use std::collections::HashSet;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Builds the runtime: single-threaded for one core (no work-stealing queues or cross-thread
/// wake-ups), multi-threaded otherwise; with `busy_poll`, each thread spins that long before
/// it sleeps.
pub fn build(cores: usize, busy_poll: Option<Duration>) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cores);
        b
    };
    builder.enable_all();
    let Some(budget) = busy_poll else {
        return builder.build();
    };
    // The runtime's descriptors are known only once it is built; its threads park only after.
    let epoll: Arc<OnceLock<Vec<RawFd>>> = Arc::default();
    let watched = epoll.clone();
    builder.on_thread_park(move || {
        if let Some(fds) = watched.get() {
            spin(fds, budget);
        }
    });
    let listed = |e: io::Error| io::Error::other(format!("PILLION_BUSY_POLL: /proc/self/fd: {e}"));
    let before = eventpoll_fds().map_err(listed)?;
    let runtime = builder.build()?;
    let opened: Vec<RawFd> = eventpoll_fds()
        .map_err(listed)?
        .difference(&before)
        .copied()
        .collect();
    if opened.is_empty() {
        return Err(io::Error::other(
            "PILLION_BUSY_POLL: cannot find the runtime's epoll descriptor",
        ));
    }
    let _ = epoll.set(opened);
    Ok(runtime)
}

/// The epoll descriptors this process has open.
fn eventpoll_fds() -> io::Result<HashSet<RawFd>> {
    let mut fds = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        // A descriptor closed since the listing (the listing's own) reads as an error: skip it.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.as_os_str() == "anon_inode:[eventpoll]"
            && let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok())
        {
            fds.insert(fd);
        }
    }
    Ok(fds)
}

/// Spins until one of `epfds` has events waiting, or `budget` has passed.
fn spin(epfds: &[RawFd], budget: Duration) {
    let mut fds: Vec<PollFd<'_>> = epfds
        .iter()
        // SAFETY: the runtime owns these descriptors and keeps them open for as long as its
        // threads run, and this runs only on those threads.
        .map(|&fd| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN))
        .collect();
    let start = Instant::now();
    loop {
        // Reading the clock is a system call on some virtual machines: not every turn.
        for _ in 0..4 {
            if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                return;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spin ends as soon as the runtime has an event, not when its budget runs out.
    #[test]
    fn a_spin_ends_when_an_event_arrives() {
        let budget = Duration::from_secs(120);
        let runtime = build(1, Some(budget)).unwrap();
        let start = Instant::now();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // Connecting from another thread: the accept below is an event in the epoll set,
            // which must end the two-minute spin the runtime starts when it parks.
            let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
            let (_conn, _) = listener.accept().await.unwrap();
            client.join().unwrap();
        });
        assert!(start.elapsed() < budget / 2, "{:?}", start.elapsed());
    }

    #[test]
    fn the_runtime_epoll_descriptors_are_found() {
        let before = eventpoll_fds().unwrap();
        let runtime = build(1, Some(Duration::from_micros(50))).unwrap();
        let after = eventpoll_fds().unwrap();
        assert!(after.len() > before.len(), "{before:?} -> {after:?}");
        drop(runtime);
    }
}
