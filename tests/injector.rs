//! The admission webhook, end to end: the real `pillion-injector` binary over HTTPS, a Python
//! client playing kube-apiserver (`tests/python/admission_check.py`: AdmissionReviews for many
//! pod shapes, each response checked as the API server checks it, the patch applied with
//! `jsonpatch`, the pod validated with `kubernetes-validate --strict`), and a stand-in for the
//! API server's namespace endpoint (no API server can run here) that checks the bearer token
//! and path the real one would. Then the serving certificate is rotated in place.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

const TOKEN: &str = "test-injector-token";

/// GET /api/v1/namespaces/{name} as the API server answers it: `meshed` is annotated for
/// injection, `plain` is not, anything else is 404; a missing or wrong token is 401.
async fn api_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok());
                        let (status, body) = if auth != Some(&format!("Bearer {TOKEN}")) {
                            (
                                401,
                                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401}),
                            )
                        } else {
                            match (req.method().as_str(), req.uri().path()) {
                                ("GET", "/api/v1/namespaces/meshed") => (
                                    200,
                                    serde_json::json!({
                                        "apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": "meshed", "annotations": {"pillion.dev/inject": "enabled"}},
                                    }),
                                ),
                                ("GET", "/api/v1/namespaces/plain") => (
                                    200,
                                    serde_json::json!({
                                        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"},
                                    }),
                                ),
                                _ => (
                                    404,
                                    serde_json::json!({
                                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "message": "namespaces not found", "reason": "NotFound", "code": 404,
                                    }),
                                ),
                            }
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body.to_string())))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn ca() -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "injector test CA");
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    (Issuer::new(p, key), cert.pem())
}

/// A serving certificate for 127.0.0.1, written to `dir/tls.crt` and `dir/tls.key`; its DER.
fn write_serving_cert(issuer: &Issuer<'_, KeyPair>, dir: &Path) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    // Not the CA's name: a leaf named like its issuer reads as self-signed.
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "pillion-injector");
    p.subject_alt_names = vec![
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
        SanType::DnsName("pillion-injector.pillion.svc".try_into().unwrap()),
    ];
    let cert = p.signed_by(&key, issuer).unwrap();
    // Key first: a watcher that looks between the two writes sees a mismatched pair, keeps
    // the old one, and takes the new pair at its next look.
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    cert.der().to_vec()
}

/// The certificate the injector presents now.
async fn presented(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    let config = client_config(ca_pem, None);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn curl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("curl")
        .args(args)
        .output()
        .expect("curl")
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_answers_as_the_api_server_expects_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, ca_pem) = ca();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    let first = write_serving_cert(&issuer, dir.path());

    let api = api_server().await;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{api}\"}}\n\
             users:\n- name: injector\n  user: {{token: {TOKEN}}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: injector}}\n\
             current-context: test\n"
        ),
    )
    .unwrap();
    let tls_dir = dir.path().display().to_string();
    let injector = Process::spawn(
        "injector",
        &bin("pillion-injector"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &format!("{tls_dir}/tls.crt"),
            "--tls-key",
            &format!("{tls_dir}/tls.key"),
            "--proxy-image",
            "registry.example.com/pillion-proxy:test",
        ],
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    );
    let line = injector.wait_log("listening", |v| {
        v["fields"]["message"] == "injector listening"
    });
    let addr: SocketAddr = line["fields"]["addr"].as_str().unwrap().parse().unwrap();
    let url = format!("https://{addr}/inject");

    // The API server's side of every review, in Python.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/admission_check.py");
    let out = tokio::task::spawn_blocking({
        let (url, ca) = (url.clone(), ca_path.clone());
        move || {
            std::process::Command::new(python())
                .arg(script)
                .arg(url)
                .arg(ca)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "admission check failed:\n{stdout}\n{}\ninjector log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        injector.log_text()
    );
    assert!(stdout.contains("all admission cases passed"), "{stdout}");

    // kube-apiserver speaks HTTP/2 to webhooks when offered.
    let review = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"h2-1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"plain","object":{"metadata":{"annotations":{"pillion.dev/inject":"enabled"}},"spec":{"containers":[{"name":"a","image":"a"}]}}}}"#;
    let ca_arg = ca_path.display().to_string();
    let h2 = curl(&[
        "-sS",
        "--http2",
        "--cacert",
        &ca_arg,
        "-H",
        "content-type: application/json",
        "--data",
        review,
        "-w",
        "\n%{http_version}",
        &url,
    ]);
    let h2_out = String::from_utf8_lossy(&h2.stdout);
    assert!(
        h2_out.ends_with("\n2"),
        "{h2_out} {}",
        String::from_utf8_lossy(&h2.stderr)
    );
    assert!(
        h2_out.contains(r#""uid":"h2-1""#) && h2_out.contains(r#""patchType":"JSONPatch""#),
        "{h2_out}"
    );

    // /metrics: clean for promtool, and counting what happened.
    let metrics = curl(&[
        "-sS",
        "--cacert",
        &ca_arg,
        &format!("https://{addr}/metrics"),
    ]);
    let text = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(
        text.contains(r#"pillion_injector_admissions_total{outcome="injected",reason=""}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"outcome="skipped",reason="opted_out""#),
        "{text}"
    );
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let all = include_str!("../docs/metrics.md");
    let docs = &all[all.find("## Injector metrics").unwrap()..];
    let problems = pillion_core::metrics_doc::disagreements(&text, docs);
    assert!(problems.is_empty(), "{problems:#?}");
    for path in ["/live", "/ready"] {
        let r = curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca_arg,
            &format!("https://{addr}{path}"),
        ]);
        assert_eq!(String::from_utf8_lossy(&r.stdout), "200", "{path}");
    }

    // Rotation in place: the new pair is served without a restart.
    assert_eq!(presented(addr, &ca_pem).await, first);
    let second = write_serving_cert(&issuer, dir.path());
    let deadline = Instant::now() + DEADLINE;
    while presented(addr, &ca_pem).await != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file is reported and the pair in use stays.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate\n").unwrap();
    injector.wait_log("reload refused", |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not reloaded"))
            && v["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("tls.crt"))
    });
    assert_eq!(presented(addr, &ca_pem).await, second);
}
