//! Transparent mode: inside a network namespace of the test's own, iptables redirects an
//! application's connections to the proxy, which finds the original destination with
//! `SO_ORIGINAL_DST`. A mesh Service is routed; anything else goes where it was going; a
//! redirect that points back at the proxy is refused. The client is curl.
//!
//! Addresses are loopback ones inside the namespace: 127.0.0.42:80 plays a Service's cluster IP,
//! 127.0.0.43:9999 a host outside the mesh.

mod common;

use common::*;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
spec:\n  ports: [{name: http, port: 80}]\n";

fn endpoints(port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    )
}

fn listening_port(p: &Process) -> u16 {
    let line = p.wait_text("listening on");
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn redirected_connections_are_routed_or_passed_through() {
    let ns = Netns::new("transparent");
    let pillion = bin("pillion");
    let app = Process::spawn_in(
        Some(&ns),
        "app",
        &pillion,
        &[
            "demo-app",
            "--listen",
            "127.0.0.1:0",
            "--app-version",
            "mesh-v1",
        ],
        &[],
    );
    let app_port = listening_port(&app);
    ns.exec(&["ip", "addr", "add", "127.0.0.43/32", "dev", "lo"]);
    let egress = Process::spawn_in(
        Some(&ns),
        "egress",
        &pillion,
        &[
            "demo-app",
            "--listen",
            "127.0.0.43:9999",
            "--app-version",
            "outside",
        ],
        &[],
    );
    listening_port(&egress);

    let dir = tempfile::tempdir().unwrap();
    write_config(&dir.path().join("web.yaml"), SERVICE);
    write_config(&dir.path().join("endpoints.yaml"), &endpoints(app_port));
    let cp = start_control_plane_in(Some(&ns), dir.path(), "127.0.0.1:0", &[]);
    let proxy = start_proxy_in(
        Some(&ns),
        Some(PROXY_UID),
        "proxy",
        cp.addr,
        "default/client",
        None,
        &[],
    );
    let out = proxy.outbound.port().to_string();

    // What pillion-init will install: the app's outbound connections go to the proxy; the
    // proxy's own (by its uid) do not.
    let uid = PROXY_UID.to_string();
    for (dst, port) in [
        ("127.0.0.42", "80"),
        ("127.0.0.43", "9999"),
        ("127.0.0.44", out.as_str()),
    ] {
        ns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            dst,
            "--dport",
            port,
            "-m",
            "owner",
            "!",
            "--uid-owner",
            &uid,
            "-j",
            "REDIRECT",
            "--to-ports",
            &out,
        ]);
    }

    let curl = |args: &[&str]| {
        let mut full = vec!["curl", "-sS", "--max-time", "30", "-D", "-"];
        full.extend_from_slice(args);
        ns.exec(&full)
    };
    // A mesh Service, called by its name: routed by the proxy.
    let answer = curl(&["-H", "Host: web", "http://127.0.0.42/"]);
    assert!(answer.contains("hello from mesh-v1"), "{answer}");
    // Outside the mesh: forwarded to the original destination unchanged.
    let answer = curl(&["http://127.0.0.43:9999/"]);
    assert!(answer.contains("hello from outside"), "{answer}");
    // A connection whose original destination is the proxy's own port would loop: refused.
    let answer = curl(&[&format!("http://127.0.0.44:{out}/")]);
    assert!(answer.starts_with("HTTP/1.1 508"), "{answer}");
    assert!(
        answer.contains("pillion-proxy-error: loop detected"),
        "{answer}"
    );

    // Opaque bytes to an outside host go through as bytes too: an HTTP/1.0 request written by
    // hand after a non-HTTP first line would be refused by detection, so check with raw bytes
    // that the egress server answers (it speaks HTTP and says 400 to garbage).
    let raw = ns.exec(&[
        "sh", "-c", "printf '\\x16\\x03\\x01garbage\\r\\n\\r\\n' | curl -sS --max-time 30 telnet://127.0.0.43:9999 || true",
    ]);
    assert!(
        raw.contains("400"),
        "the outside server should answer the forwarded bytes: {raw:?}"
    );
}
