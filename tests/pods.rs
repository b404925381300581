//! Two "pods" as Kubernetes makes them, in network namespaces of the test's own: each has an
//! address on a bridge (in a third namespace, the "node", where the control plane runs), an
//! app, a proxy running as its own user, and the rules the real `pillion-init` installs. The
//! app in pod A calls pod B's IP and port unchanged; the request crosses both proxies over mTLS
//! and arrives at B's app. Nothing but `pillion-init` sets up the redirect.

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;

const NODE_IP: &str = "10.207.0.1";

/// The node namespace with a bridge; pods are attached to it by `pod()`.
fn node(tag: &str) -> Netns {
    let node = Netns::new(tag);
    node.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    node.exec(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"]);
    node.exec(&["ip", "link", "set", "br0", "up"]);
    node
}

/// A pod namespace with `eth0` at `ip` on the node's bridge.
fn pod(node: &Netns, tag: &str, ip: &str, veth: &str) -> Netns {
    let pod = Netns::new(tag);
    node.exec(&[
        "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    node.exec(&["ip", "link", "set", veth, "master", "br0"]);
    node.exec(&["ip", "link", "set", veth, "up"]);
    pod.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "route", "add", "default", "via", NODE_IP]);
    pod
}

/// `pillion-init` inside `ns`; its exit code, stdout and stderr.
fn pillion_init(ns: &Netns, run_as: Option<u32>, args: &[&str]) -> (i32, String, String) {
    let init = bin("pillion-init");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]);
    if let Some(uid) = run_as {
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
    }
    let out = cmd.arg(init).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn init_args(proxy: &ProxyProc) -> Vec<String> {
    vec![
        "--inbound-port".into(),
        proxy.inbound.port().to_string(),
        "--outbound-port".into(),
        proxy.outbound.port().to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--skip-inbound-ports".into(),
        proxy.admin.port().to_string(),
    ]
}

fn nat_rules(ns: &Netns) -> Vec<String> {
    ns.exec(&["iptables-save", "-t", "nat"])
        .lines()
        .filter(|l| l.starts_with("-A"))
        .map(String::from)
        .collect()
}

#[test]
fn a_pod_calls_another_by_ip_through_both_proxies_over_mtls() {
    let node = node("node");
    let pod_a = pod(&node, "pod-a", "10.207.0.2", "veth-a");
    let pod_b = pod(&node, "pod-b", "10.207.0.3", "veth-b");

    // Pod B's app, on all of the pod's addresses.
    let app = Process::spawn_in(
        Some(&pod_b),
        "app-b",
        &bin("pillion"),
        &[
            "demo-app",
            "--listen",
            "0.0.0.0:0",
            "--app-version",
            "pod-b",
        ],
        &[],
    );
    let app_port = printed_port(&app);

    // The control plane on the node; it knows pod B's address as a meshed endpoint (in
    // Kubernetes mode the endpoint's own port: iptables takes the connection to the proxy).
    let (dir, config) = mtls_dir();
    write_config(
        &config.join("mesh.yaml"),
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: {app_port}}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\n\
             \x20 annotations: {{pillion.dev/identity: \"{WEB_ID}\"}}\n\
             addressType: IPv4\nports: [{{name: http, port: {app_port}}}]\nendpoints: [{{addresses: [\"10.207.0.3\"]}}]\n"
        ),
    );
    let ca = dir.path().join("ca").display().to_string();
    let tokens = dir.path().join("tokens").display().to_string();
    let cp = start_control_plane_in(
        Some(&node),
        &config,
        &format!("{NODE_IP}:0"),
        &["--ca-dir", &ca, "--identity-tokens", &tokens],
    );
    let identity = |sa: &str| {
        let mut env = identity_env(dir.path(), sa, &dir.path().join(format!("token-{sa}")));
        // Inbound traffic arrives at the pod's own address, not loopback.
        env.push(("PILLION_INBOUND_LISTEN", "0.0.0.0:0".to_string()));
        env
    };
    let proxy_a = start_proxy_in(
        Some(&pod_a),
        Some(PROXY_UID),
        "proxy-a",
        cp.addr,
        "default/client",
        None,
        &identity("client"),
    );
    let proxy_b = start_proxy_in(
        Some(&pod_b),
        Some(PROXY_UID),
        "proxy-b",
        cp.addr,
        "default/web",
        None,
        &identity("web"),
    );

    // What the injected init container runs, in each pod.
    for (ns, proxy) in [(&pod_a, &proxy_a), (&pod_b, &proxy_b)] {
        let args = init_args(proxy);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = pillion_init(ns, None, &args);
        assert_eq!(code, 0, "pillion-init failed: {stderr}");
    }
    // Idempotent: a second run (a restarted init container) leaves the same rules.
    let before = nat_rules(&pod_a);
    let args = init_args(&proxy_a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(pillion_init(&pod_a, None, &args).0, 0);
    assert_eq!(nat_rules(&pod_a), before);
    assert_eq!(
        before.iter().filter(|r| r.contains("-j PILLION_")).count(),
        2,
        "{before:#?}"
    );

    // Pod A's app calls pod B by IP and port, unchanged, as it would without a mesh.
    let url = format!("http://10.207.0.3:{app_port}/");
    let deadline = Instant::now() + DEADLINE;
    let answer = loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod_a.0,
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-D",
                "-",
                &url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("hello from pod-b") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the mesh: {text} {}\nproxy-a:\n{}\nproxy-b:\n{}",
            String::from_utf8_lossy(&out.stderr),
            proxy_a.proc.log_text(),
            proxy_b.proc.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // It crossed both proxies, and the hop between them was mTLS with the client's identity.
    let metrics = |ns: &Netns, proxy: &ProxyProc| {
        ns.exec(&["curl", "-sS", &format!("http://{}/metrics", proxy.admin)])
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = metrics(&pod_a, &proxy_a);
        let b = metrics(&pod_b, &proxy_b);
        let client_side = a.lines().any(|l| {
            l.starts_with("pillion_responses_total{")
                && l.contains("direction=\"outbound\"")
                && l.contains("tls=\"true\"")
                && l.contains(WEB_ID)
        });
        let server_side = b.lines().any(|l| {
            l.starts_with("pillion_responses_total{")
                && l.contains("direction=\"inbound\"")
                && l.contains("tls=\"true\"")
                && l.contains(CLIENT_ID)
        });
        if client_side && server_side {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not seen over mTLS:\n--- proxy-a\n{a}\n--- proxy-b\n{b}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn pillion_init_prints_its_rules_and_says_what_is_wrong() {
    let ns = Netns::new("init");
    let (code, rules, _) = pillion_init(&ns, None, &["--dry-run", "--skip-outbound-ports", "5432"]);
    assert_eq!(code, 0);
    assert!(
        rules.contains("-A PILLION_OUTBOUND -p tcp -m multiport --dports 5432 -j RETURN"),
        "{rules}"
    );
    assert!(
        rules.contains("-A PILLION_INBOUND -p tcp -j REDIRECT --to-ports 4143"),
        "{rules}"
    );
    assert!(nat_rules(&ns).is_empty(), "--dry-run changed the rules");

    let (code, _, err) = pillion_init(&ns, None, &["--iptables", "no-such-iptables"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no-such-iptables-save not found: install iptables"),
        "{err}"
    );

    // Without root and NET_ADMIN: the fix is named.
    let (code, _, err) = pillion_init(&ns, Some(PROXY_UID), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("NET_ADMIN"), "{err}");

    let (code, _, err) = pillion_init(&ns, None, &["--skip-inbound-ports", "80-70"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("80-70"), "{err}");
}
