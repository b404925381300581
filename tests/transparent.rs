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

/// `pillion demo-app` inside the namespace, answering as `version`.
fn demo_app_in(ns: &Netns, name: &str, listen: &str, version: &str) -> Process {
    let args = ["demo-app", "--listen", listen, "--app-version", version];
    Process::spawn_in(Some(ns), name, &bin("pillion"), &args, &[])
}

#[test]
fn redirected_connections_are_routed_or_passed_through() {
    let ns = Netns::new("transparent");
    let app = demo_app_in(&ns, "app", "127.0.0.1:0", "mesh-v1");
    let app_port = printed_port(&app);
    ns.exec(&["ip", "addr", "add", "127.0.0.43/32", "dev", "lo"]);
    let egress = demo_app_in(&ns, "egress", "127.0.0.43:9999", "outside");
    printed_port(&egress);

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

/// Calls by IP reach the mesh too: a Service's cluster IP routes like the Service, and opaque
/// TCP to a meshed endpoint crosses over mTLS (ALPN `pillion.tcp/1`) to the server proxy.
#[test]
fn cluster_ips_route_and_opaque_tcp_crosses_mtls() {
    let ns = Netns::new("clusterip");
    let app = demo_app_in(&ns, "app", "127.0.0.1:0", "meshed");
    let app_port = printed_port(&app);
    let (dir, config) = mtls_dir();
    let ca = dir.path().join("ca").display().to_string();
    let tokens = dir.path().join("tokens").display().to_string();
    let cp = start_control_plane_in(
        Some(&ns),
        &config,
        "127.0.0.1:0",
        &["--ca-dir", &ca, "--identity-tokens", &tokens],
    );
    let identity = |sa: &str| {
        vec![
            (
                "PILLION_TRUST_ANCHORS",
                dir.path()
                    .join("ca/trust-anchors.pem")
                    .display()
                    .to_string(),
            ),
            (
                "PILLION_IDENTITY_TOKEN_FILE",
                dir.path().join(format!("token-{sa}")).display().to_string(),
            ),
            ("PILLION_SERVICE_ACCOUNT", sa.to_string()),
        ]
    };
    let server = start_proxy_in(
        Some(&ns),
        None,
        "server",
        cp.addr,
        "default/web",
        None,
        &identity("web"),
    );
    let mut client_env = identity("client");
    client_env.push(("PILLION_OPAQUE_PORTS", "5555".to_string()));
    let client = start_proxy_in(
        Some(&ns),
        Some(PROXY_UID),
        "client",
        cp.addr,
        "default/client",
        None,
        &client_env,
    );
    write_config(
        &config.join("mesh.yaml"),
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: 127.0.0.42\n  ports: [{{name: http, port: 80}}, {{name: raw, port: 5555}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\n\
             \x20 annotations: {{pillion.dev/identity: \"{WEB_ID}\", pillion.dev/proxy-port: \"{}\"}}\n\
             addressType: IPv4\nports: [{{name: http, port: {app_port}}}, {{name: raw, port: {app_port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
            server.inbound.port()
        ),
    );
    let out = client.outbound.port().to_string();
    let uid = PROXY_UID.to_string();
    for port in ["80", "5555"] {
        ns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.42",
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
    let curl = |url: &str| {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.0,
                    "curl",
                    "-sS",
                    "--max-time",
                    "10",
                    url,
                ])
                .output()
                .unwrap();
            let body = String::from_utf8_lossy(&out.stdout).to_string();
            if body.contains("hello from meshed") {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url}: {body} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // HTTP to the cluster IP, with no Service name anywhere in the request.
    curl("http://127.0.0.42/");
    // Port 5555 is opaque for the client proxy: the bytes cross as TCP over mTLS.
    curl("http://127.0.0.42:5555/");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let m = ns.exec(&["curl", "-sS", &format!("http://{}/metrics", server.admin)]);
        if m.contains("protocol=\"opaque+mtls\"") && m.contains("protocol=\"h2+mtls\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
