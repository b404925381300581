//! `PILLION_BUSY_POLL`: a proxy that spins before sleeping serves its requests without going
//! to sleep between them.

mod common;

use common::*;

/// How many times a process's threads have gone to sleep (their voluntary context switches).
fn sleeps(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_proxy_does_not_sleep_between_requests() {
    let one_core = ("PILLION_CORES", "1".to_string());
    let busy = ("PILLION_BUSY_POLL", "10ms".to_string());
    let mesh = Mesh::start_with_apps(100, 0, demo_apps().await, &[one_core, busy]).await;
    mesh.wait_for_versions(&["v1"]).await;
    let client = http1_client();
    // The server proxy in front of web-v1 (every request goes there) sleeps as usual: the
    // yardstick that shows the count means something.
    let server = &mesh.server_proxies[0].proc;
    let (client_pid, server_pid) = (mesh.client.proc.pid(), server.pid());
    let (client_before, server_before) = (sleeps(client_pid), sleeps(server_pid));
    const REQUESTS: u64 = 200;
    for _ in 0..REQUESTS {
        let a = get(&client, mesh.client.outbound, "web", "/")
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.error);
        assert_eq!(a.version, "v1");
    }
    let client_sleeps = sleeps(client_pid) - client_before;
    let server_sleeps = sleeps(server_pid) - server_before;
    // Each request leaves a proxy that does not spin idle at least once: while the next
    // request is on its way. The spinning one sleeps only when a gap outlasts its 10 ms (this
    // machine's other work can stretch a few).
    assert!(
        server_sleeps >= REQUESTS,
        "the server proxy slept {server_sleeps} times in {REQUESTS} requests"
    );
    assert!(
        client_sleeps < REQUESTS / 4,
        "the busy-polling proxy slept {client_sleeps} times in {REQUESTS} requests"
    );
}

#[test]
fn a_busy_poll_too_long_is_refused_at_start() {
    let out = std::process::Command::new(bin("pillion-proxy"))
        .env("PILLION_CONTROL_PLANE_ADDR", "127.0.0.1:1")
        .env("PILLION_BUSY_POLL", "1s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PILLION_BUSY_POLL") && err.contains("longer than 10ms"),
        "{err}"
    );
}
