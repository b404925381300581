//! Destinations outside the mesh configuration, found by DNS (`PILLION_DNS`): used where no
//! original destination says where a request goes (explicit mode: an application sending to
//! the proxy by `http_proxy`, or addressing it directly). A and AAAA records, or SRV records for
//! names that ask for them (`_http._tcp.example.com`: targets and ports from the records).
//!
//! Answers are kept for their TTL (at least 1 s, at most 5 min). A name used after its answer
//! expired is served the old addresses while a new answer is fetched in the background; a
//! failed refresh keeps the old addresses and tries again a few seconds later. Endpoint state
//! (connections, latency estimates, ejections) is carried over by address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use pillion_proto::discovery::v1::ProtocolHint;

use crate::balance::Endpoint;
use crate::http::errors::ProxyError;

const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(300);
/// After a failed refresh, the old addresses are used this long before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Names remembered at once; past it the least recently used is forgotten.
const MAX_NAMES: usize = 1000;

/// Where names are resolved: the system's configuration (`/etc/resolv.conf`, `/etc/hosts`) or
/// the given name servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    System,
    Given(Vec<SocketAddr>),
}

pub struct Dns {
    resolver: TokioResolver,
    names: Mutex<HashMap<String, Entry>>,
    connect_timeout: Duration,
    /// One resolution's bound.
    timeout: Duration,
}

struct Entry {
    endpoints: Arc<[Arc<Endpoint>]>,
    valid_until: Instant,
    refreshing: bool,
    last_used: Instant,
}

impl Dns {
    pub fn new(
        servers: &Servers,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Dns, String> {
        let builder = match servers {
            Servers::System => TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system's DNS configuration: {e}"))?,
            Servers::Given(addrs) => {
                let servers = addrs
                    .iter()
                    .map(|a| {
                        let conn = |mut c: ConnectionConfig| {
                            c.port = a.port();
                            c
                        };
                        NameServerConfig::new(
                            a.ip(),
                            true,
                            vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                        )
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let resolver = builder
            .build()
            .map_err(|e| format!("starting the DNS resolver: {e}"))?;
        Ok(Dns {
            resolver,
            names: Mutex::new(HashMap::new()),
            connect_timeout,
            timeout,
        })
    }

    fn names(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        match self.names.lock() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The endpoints of `host:port`, resolving it if it is not known yet.
    pub async fn endpoints(
        self: &Arc<Self>,
        host: &str,
        port: u16,
    ) -> Result<Arc<[Arc<Endpoint>]>, ProxyError> {
        let key = format!("{}:{port}", host.to_ascii_lowercase());
        let now = Instant::now();
        {
            let mut names = self.names();
            if let Some(e) = names.get_mut(&key) {
                e.last_used = now;
                if now >= e.valid_until && !e.refreshing {
                    e.refreshing = true;
                    let dns = self.clone();
                    let (host, key) = (host.to_string(), key.clone());
                    tokio::spawn(async move { dns.refresh(&host, port, &key).await });
                }
                if !e.endpoints.is_empty() {
                    return Ok(e.endpoints.clone());
                }
            }
        }
        let (addrs, valid_until) = self.resolve(host, port).await?;
        Ok(self.store(&key, addrs, valid_until))
    }

    async fn refresh(&self, host: &str, port: u16, key: &str) {
        match self.resolve(host, port).await {
            Ok((addrs, valid_until)) => {
                self.store(key, addrs, valid_until);
            }
            Err(e) => {
                tracing::info!(%host, error = %e, "DNS refresh failed; keeping the previous addresses");
                if let Some(entry) = self.names().get_mut(key) {
                    entry.refreshing = false;
                    entry.valid_until = Instant::now() + RETRY_AFTER;
                }
            }
        }
    }

    /// Records an answer, keeping the endpoints of addresses that stay.
    fn store(
        &self,
        key: &str,
        addrs: Vec<SocketAddr>,
        valid_until: Instant,
    ) -> Arc<[Arc<Endpoint>]> {
        let mut names = self.names();
        let old: HashMap<SocketAddr, Arc<Endpoint>> = names
            .get(key)
            .map(|e| e.endpoints.iter().map(|ep| (ep.addr, ep.clone())).collect())
            .unwrap_or_default();
        let endpoints: Arc<[Arc<Endpoint>]> = addrs
            .into_iter()
            .map(|a| {
                old.get(&a).cloned().unwrap_or_else(|| {
                    Arc::new(Endpoint::new(
                        a,
                        ProtocolHint::Unspecified,
                        self.connect_timeout,
                    ))
                })
            })
            .collect();
        if names.len() >= MAX_NAMES
            && !names.contains_key(key)
            && let Some(oldest) = names
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
        {
            names.remove(&oldest);
        }
        names.insert(
            key.to_string(),
            Entry {
                endpoints: endpoints.clone(),
                valid_until,
                refreshing: false,
                last_used: Instant::now(),
            },
        );
        endpoints
    }

    /// The addresses of `host` (with `port`, or the SRV records' ports), and until when.
    async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Instant), ProxyError> {
        let fail = |reason: String| ProxyError::Dns(format!("{host}: {reason}"));
        let lookup = async {
            if host.starts_with('_') {
                let srv = self
                    .resolver
                    .srv_lookup(host)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let mut until = srv.valid_until();
                let mut addrs = Vec::new();
                let records = srv.answers().iter().filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(s) => Some(s),
                    _ => None,
                });
                for record in records {
                    let ips = self
                        .resolver
                        .lookup_ip(record.target.clone())
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    until = until.min(ips.valid_until());
                    addrs.extend(ips.iter().map(|ip| SocketAddr::new(ip, record.port)));
                }
                Ok((addrs, until))
            } else {
                let ips = self
                    .resolver
                    .lookup_ip(host)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let until = ips.valid_until();
                Ok((
                    ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                    until,
                ))
            }
        };
        let (mut addrs, until) = tokio::time::timeout(self.timeout, lookup)
            .await
            .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))??;
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(fail("no address".into()));
        }
        let now = Instant::now();
        let until = until.clamp(now + MIN_TTL, now + MAX_TTL);
        tracing::debug!(%host, addresses = addrs.len(), ttl = ?until - now, "resolved");
        Ok((addrs, until))
    }
}
