//! What mTLS must refuse, each checked against a real proxy: from Rust (rustls) and from
//! `openssl s_client`. Each case starts from a client that works (same code, a good
//! certificate), so a refusal is the proxy's doing and not the test's.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// An HTTP/2 GET over TLS to a server proxy's inbound port: the status, or why it failed.
async fn get_over_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(WEB_DNS).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<hyper::body::Bytes>,
    >(hyper_util::rt::TokioExecutor::new(), io)
    .await
    .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("http://web/")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    Ok(resp.status().as_u16())
}

async fn tls_failures(p: &ProxyProc) -> usize {
    let (_, m) = admin_get(p.admin, "/metrics").await;
    m.lines()
        .find(|l| l.starts_with("pillion_tls_handshake_failures_total{direction=\"inbound\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_proxy_refuses_bad_client_certificates() {
    let mesh = Mesh::start_mtls("1h", &[]).await;
    let server = &mesh.server_proxies[0];
    let anchors = ca_file(&mesh, "trust-anchors.pem");
    let (issuer, issuer_der) = mesh_issuer(&mesh);
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let with_chain = |(mut chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)| {
        chain.push(issuer_der.clone());
        (chain, key)
    };

    // The control: a good certificate from the mesh's CA works.
    let good = with_chain(leaf(
        &issuer,
        CLIENT_ID,
        "client.default.x",
        now - hour,
        now + hour,
    ));
    assert_eq!(
        get_over_tls(server.inbound, client_config(&anchors, Some(good))).await,
        Ok(200)
    );

    let cases = [
        ("no client certificate", None),
        (
            "a certificate from a foreign CA",
            Some(leaf(
                &foreign_issuer(),
                CLIENT_ID,
                "client.default.x",
                now - hour,
                now + hour,
            )),
        ),
        (
            "an expired certificate",
            Some(with_chain(leaf(
                &issuer,
                CLIENT_ID,
                "client.default.x",
                now - 2 * hour,
                now - hour,
            ))),
        ),
    ];
    for (what, cert) in cases {
        let before = tls_failures(server).await;
        let result = get_over_tls(server.inbound, client_config(&anchors, cert)).await;
        assert!(result.is_err(), "{what}: accepted with {result:?}");
        let deadline = std::time::Instant::now() + DEADLINE;
        while tls_failures(server).await <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: refusal not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The same refusals seen by OpenSSL's client.
    let dir = tempfile::tempdir().unwrap();
    let anchors_file = dir.path().join("anchors.pem");
    std::fs::write(&anchors_file, &anchors).unwrap();
    let s_client = |extra: &[&str]| {
        let mut args = vec![
            "s_client".to_string(),
            "-connect".into(),
            server.inbound.to_string(),
            "-tls1_3".into(),
            "-alpn".into(),
            "h2".into(),
            "-CAfile".into(),
            anchors_file.display().to_string(),
            "-verify_return_error".into(),
            // Keep reading after our input ends, so that the server's alert is seen.
            "-ign_eof".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = std::process::Command::new("openssl")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl");
        // Send the HTTP/2 preface so that a refusal after the handshake shows up too.
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let said = s_client(&[]);
    assert!(
        said.contains("alert certificate required"),
        "openssl without a client certificate: {said}"
    );
    let foreign = leaf(
        &foreign_issuer(),
        CLIENT_ID,
        "client.default.x",
        now - hour,
        now + hour,
    );
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, pem("CERTIFICATE", &foreign.0[0])).unwrap();
    std::fs::write(&key_file, pem("PRIVATE KEY", foreign.1.secret_der())).unwrap();
    let said = s_client(&[
        "-cert",
        cert_file.to_str().unwrap(),
        "-key",
        key_file.to_str().unwrap(),
    ]);
    assert!(
        said.contains("alert unknown ca"),
        "openssl with a foreign certificate: {said}"
    );
}

fn pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap());
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// Discovery promises one identity, the server presents another: the client proxy refuses to
/// send it anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_gets_nothing() {
    let mesh = Mesh::start_mtls("1h", &[]).await;
    let slices = std::fs::read_to_string(mesh.path("endpoints.yaml")).unwrap();
    write_config(
        &mesh.path("endpoints.yaml"),
        &slices.replace(WEB_ID, "spiffe://cluster.local/ns/default/sa/impostor"),
    );
    let client = http1_client();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let a = get(&client, mesh.client.outbound, "web", "/")
            .await
            .unwrap();
        if a.status == 502 {
            assert_eq!(a.error.as_deref(), Some("tls handshake failed"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `all-authenticated`, plaintext callers get 403 while meshed ones pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_when_the_policy_requires_authentication() {
    let policy = [(
        "PILLION_INBOUND_DEFAULT_POLICY",
        "all-authenticated".to_string(),
    )];
    let mesh = Mesh::start_mtls_with("1h", &[], &policy).await;
    let client = http1_client();
    let a = get(&client, mesh.server_proxies[0].inbound, "web", "/")
        .await
        .unwrap();
    assert_eq!((a.status, a.error.as_deref()), (403, Some("forbidden")));
    let a = get(&client, mesh.client.outbound, "web", "/")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "meshed callers pass: {:?}", a.error);
}

/// A token for one identity does not get a certificate for another; the proxy stays unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_identity_gets_no_certificate() {
    let mesh = Mesh::start_mtls("1h", &[]).await;
    let token_file = mesh.path("token-client");
    let impostor = start_proxy(
        "impostor",
        mesh.cp.addr,
        "default/impostor",
        None,
        &identity_env(mesh.dir.path(), "web", &token_file),
    );
    mesh.cp.proc.wait_log("the refusal", |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the token is for another identity"))
            && v["fields"]["asked"] == WEB_ID
    });
    // Connected to the control plane, but without a certificate: not ready.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = admin_get(impostor.admin, "/ready").await;
        assert_eq!(status, 503, "{body}");
        if body.contains("no certificate") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An unknown token gets no certificate either, and the refusal is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_gets_no_certificate() {
    let mesh = Mesh::start_mtls("1h", &[]).await;
    let token_file = mesh.path("token-forged");
    std::fs::write(&token_file, "not-a-token").unwrap();
    let _proxy = start_proxy(
        "forged",
        mesh.cp.addr,
        "default/web",
        None,
        &identity_env(mesh.dir.path(), "web", &token_file),
    );
    mesh.cp.proc.wait_log("the refusal", |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown or missing token"))
    });
}
