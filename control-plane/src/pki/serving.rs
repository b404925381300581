//! TLS on the control plane's own gRPC port. The control plane issues itself a certificate from
//! its CA (for `--tls-identity`), renews it at 70 % of its lifetime, and asks clients for their
//! mesh certificate without requiring one: a proxy bootstraps its identity over this port before
//! it has a certificate, and is authenticated by it afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use pillion_proto::names::Identity;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

use crate::pki::ca::Ca;

/// What handlers learn about a TLS client: the SPIFFE ID of its certificate, if it sent one.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub identity: Option<Identity>,
}

/// The address of the connection a gRPC request came on (plaintext or TLS).
pub fn peer_addr<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
    req.remote_addr()
        .or_else(|| req.extensions().get::<PeerInfo>().and_then(|p| p.remote))
}

/// The verified identity of the caller of a gRPC request, when it presented a certificate.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<&Identity> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity.as_ref())
}

struct Resolver(watch::Receiver<Option<Arc<CertifiedKey>>>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().clone()
    }
}

/// Issues the serving certificate and keeps it renewed; returns the server configuration.
pub fn serving_config(
    ca: Arc<Ca>,
    identity: Identity,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::pki::ca::pem_blocks(&ca.anchors_pem, "CERTIFICATE") {
        roots.add(CertificateDer::from(der))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let key = rcgen::KeyPair::generate()?;
    let first = issue(&ca, &identity, &key, &provider)?;
    let (tx, rx) = watch::channel(Some(Arc::new(first.0)));
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(rx)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut renew_at = first.1;
    let spiffe_id = identity.spiffe_id();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(renew_at).await;
            match issue(&ca, &identity, &key, &provider) {
                Ok((certified, next)) => {
                    tx.send_replace(Some(Arc::new(certified)));
                    tracing::info!(identity = %identity.spiffe_id(), "control-plane certificate renewed");
                    renew_at = next;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the control-plane certificate; retrying");
                    renew_at = Duration::from_secs(5);
                }
            }
        }
    });
    tracing::info!(identity = %spiffe_id, "control-plane TLS on");
    Ok(Arc::new(config))
}

/// A certificate for the control plane's key, and how long until it should be renewed.
fn issue(
    ca: &Ca,
    identity: &Identity,
    key: &rcgen::KeyPair,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<(CertifiedKey, Duration)> {
    let certified = ca.sign(identity, key)?;
    let mut chain = vec![CertificateDer::from(certified.leaf_der)];
    chain.extend(
        certified
            .intermediates_der
            .into_iter()
            .map(CertificateDer::from),
    );
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let life = certified
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Ok((
        CertifiedKey::from_der(chain, private, provider)?,
        life * 7 / 10,
    ))
}

/// A TLS connection that tells tonic who the client is.
pub struct TlsConn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.0.get_ref();
        let identity = session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .and_then(|(_, cert)| {
                let san = cert.subject_alternative_name().ok()??;
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Identity::from_spiffe_id(u),
                    _ => None,
                })
            });
        PeerInfo {
            remote: tcp.peer_addr().ok(),
            identity,
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and completes their TLS handshakes off the accept loop.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
