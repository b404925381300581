//! Endpoint selection: power of two choices over a peak-EWMA latency estimate (as in Finagle
//! and Linkerd). Each endpoint's estimate and its connections live in one shared `Endpoint`
//! that configuration updates carry over by address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pillion_proto::discovery::v1::ProtocolHint;
use rand::Rng;

use crate::http::pool::Conns;

pub mod outlier;
use outlier::Outlier;

/// The estimate a new endpoint starts with: optimistic enough to get tried, not so low that it
/// takes everything before its first answer.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the estimate forgets a peak.
const DECAY: Duration = Duration::from_secs(10);

pub struct Endpoint {
    /// The endpoint as discovery named it (the application's address).
    pub addr: SocketAddr,
    pub hint: ProtocolHint,
    /// Set when a Pillion proxy fronts the endpoint.
    pub meshed: Option<Meshed>,
    pub conns: Conns,
    /// Requests sent and not yet finished (until the response body ends).
    pending: AtomicU32,
    ewma: Mutex<Ewma>,
    /// Failures in a row, and the ejection they led to.
    pub outlier: Outlier,
}

struct Ewma {
    rtt_ns: f64,
    stamp: Instant,
}

/// A meshed endpoint: where its proxy listens and who it must be.
#[derive(Clone, PartialEq, Eq)]
pub struct Meshed {
    /// The SPIFFE ID discovery promised.
    pub identity: Arc<str>,
    /// Where the endpoint's proxy listens (the endpoint's IP, its proxy port).
    pub proxy_addr: SocketAddr,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, hint: ProtocolHint, connect_timeout: Duration) -> Self {
        Self::with_mesh(addr, hint, connect_timeout, None, None)
    }

    /// An endpoint fronted by a proxy: connections go to the proxy, over mTLS when `tls` is
    /// given (this proxy has an identity), in plaintext otherwise.
    pub fn with_mesh(
        addr: SocketAddr,
        hint: ProtocolHint,
        connect_timeout: Duration,
        meshed: Option<Meshed>,
        tls: Option<crate::http::pool::TlsTarget>,
    ) -> Self {
        let connect_to = meshed.as_ref().map_or(addr, |m| m.proxy_addr);
        Endpoint {
            addr,
            hint,
            meshed,
            conns: Conns::new(connect_to, connect_timeout, tls),
            pending: AtomicU32::new(0),
            ewma: Mutex::new(Ewma {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                stamp: Instant::now(),
            }),
            outlier: Outlier::default(),
        }
    }

    fn ewma(&self) -> std::sync::MutexGuard<'_, Ewma> {
        match self.ewma.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The cost of sending one more request here: estimated latency times outstanding work.
    pub fn load(&self) -> f64 {
        self.load_at(Instant::now())
    }

    /// The estimate decays with the time since it was last updated, as in Finagle's and
    /// tower's peak EWMA: an endpoint penalized once (a failure counts as 1 s) and then never
    /// picked again would otherwise keep its penalty forever; decaying, it soon looks cheap
    /// enough to be tried again, and a recovered endpoint is probed back in.
    fn load_at(&self, now: Instant) -> f64 {
        let e = self.ewma();
        let elapsed = now.saturating_duration_since(e.stamp).as_secs_f64();
        let rtt = e.rtt_ns * (-elapsed / DECAY.as_secs_f64()).exp();
        rtt * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    /// `observe_at`, the answer having come now.
    #[cfg(test)]
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, Instant::now());
    }

    /// Records one observed latency, the answer having come at `now` (the caller's clock
    /// reading, which timed it): a peak is taken at once, a dip decays in over `DECAY`.
    pub fn observe_at(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut e = self.ewma();
        if rtt > e.rtt_ns {
            e.rtt_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(e.stamp).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            e.rtt_ns = e.rtt_ns * w + rtt * (1.0 - w);
        }
        e.stamp = now;
    }

    /// Requests sent here and not finished.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts a request as outstanding until the guard drops.
    pub fn start(self: &Arc<Self>) -> PendingGuard {
        self.pending.fetch_add(1, Ordering::Relaxed);
        PendingGuard(self.clone())
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "address": self.addr.to_string(),
            "protocolHint": self.hint.as_str_name(),
            "identity": self.meshed.as_ref().map(|m| m.identity.to_string()),
            "proxyAddress": self.meshed.as_ref().map(|m| m.proxy_addr.to_string()),
            "tls": self.conns.is_tls(),
            "pending": self.pending.load(Ordering::Relaxed),
            "ewmaMs": self.ewma().rtt_ns / 1e6,
            "ejectedForMs": self.outlier.ejected_for_ms(),
        })
    }
}

pub struct PendingGuard(Arc<Endpoint>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoints that are not discovered but fixed by the connection: the local application
/// (inbound) and original destinations outside the mesh (outbound, transparent mode). Cached so
/// their connections are pooled.
pub struct EndpointCache {
    connect_timeout: Duration,
    map: Mutex<std::collections::HashMap<SocketAddr, Arc<Endpoint>>>,
}

/// More distinct addresses than this and the cache starts over (it only holds pools).
const CACHE_MAX: usize = 1024;

impl EndpointCache {
    pub fn new(connect_timeout: Duration) -> Self {
        EndpointCache {
            connect_timeout,
            map: Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn get(&self, addr: SocketAddr) -> Arc<Endpoint> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= CACHE_MAX && !map.contains_key(&addr) {
            map.clear();
        }
        map.entry(addr)
            .or_insert_with(|| {
                Arc::new(Endpoint::new(
                    addr,
                    ProtocolHint::Unspecified,
                    self.connect_timeout,
                ))
            })
            .clone()
    }
}

/// Two endpoints at random; the one with the lower load. Ejected endpoints are passed over
/// while any other is left.
/// Generic over how the endpoints are held (`Arc<Endpoint>` in a snapshot, `&Arc<Endpoint>`
/// when a retry passes over those tried), so that the pick borrows and clones nothing.
pub fn pick<E: AsRef<Endpoint>>(endpoints: &[E]) -> Option<&E> {
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            // One clock read for both (a read is ~75 ns in a VM, a request's whole pick less).
            let now = Instant::now();
            let lower = if ea.as_ref().load_at(now) <= eb.as_ref().load_at(now) {
                ea
            } else {
                eb
            };
            let ejected = |e: &E| e.as_ref().outlier.is_ejected();
            Some(match (ejected(ea), ejected(eb)) {
                (false, false) => lower,
                (false, true) => ea,
                (true, false) => eb,
                (true, true) => pick_live(endpoints).unwrap_or(lower),
            })
        }
    }
}

/// Both random picks were ejected: a live endpoint at random, if there is one.
#[cold]
fn pick_live<E: AsRef<Endpoint>>(endpoints: &[E]) -> Option<&E> {
    let live: Vec<&E> = endpoints
        .iter()
        .filter(|e| !e.as_ref().outlier.is_ejected())
        .collect();
    match live.len() {
        0 => None,
        n => Some(live[rand::rng().random_range(0..n)]),
    }
}

/// An endpoint not tried yet for this request (a retry goes elsewhere where it can), or any
/// endpoint once all have been tried.
pub fn pick_untried<'a>(
    endpoints: &'a [Arc<Endpoint>],
    tried: &[&Arc<Endpoint>],
) -> Option<&'a Arc<Endpoint>> {
    if tried.is_empty() {
        return pick(endpoints);
    }
    let others: Vec<&'a Arc<Endpoint>> = endpoints
        .iter()
        .filter(|ep| !tried.iter().any(|t| Arc::ptr_eq(t, ep)))
        .collect();
    pick(&others).copied().or_else(|| pick(endpoints))
}

/// Shedding load: an endpoint with room for one more request, if any has.
#[cold]
pub fn below_limit(endpoints: &[Arc<Endpoint>], limit: u32) -> Option<&Arc<Endpoint>> {
    let room: Vec<&Arc<Endpoint>> = endpoints.iter().filter(|e| e.pending() < limit).collect();
    pick(&room).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            ProtocolHint::Unspecified,
            Duration::from_secs(1),
        ))
    }

    #[test]
    fn ejected_endpoints_get_no_traffic_unless_all_are() {
        let eps: Vec<_> = (1..=3).map(ep).collect();
        for _ in 0..outlier::Settings::default().consecutive_failures {
            eps[0].outlier.failure();
            eps[1].outlier.failure();
        }
        assert!(eps[0].outlier.is_ejected() && eps[1].outlier.is_ejected());
        assert!((0..200).all(|_| Arc::ptr_eq(pick(&eps).unwrap(), &eps[2])));
        for _ in 0..outlier::Settings::default().consecutive_failures {
            eps[2].outlier.failure();
        }
        // Never the last: with every endpoint ejected, p2c picks among all of them again.
        let picked: std::collections::HashSet<u16> =
            (0..200).map(|_| pick(&eps).unwrap().addr.port()).collect();
        assert!(picked.len() >= 2, "{picked:?}");
    }

    #[test]
    fn slow_endpoint_gets_less_traffic() {
        let fast = ep(1);
        let slow = ep(2);
        fast.observe(Duration::from_millis(1));
        slow.observe(Duration::from_millis(500));
        let eps = vec![fast.clone(), slow.clone()];
        let picks_fast = (0..100)
            .filter(|_| Arc::ptr_eq(pick(&eps).unwrap(), &fast))
            .count();
        assert_eq!(
            picks_fast, 100,
            "with two endpoints p2c always compares both"
        );
    }

    #[test]
    fn pending_requests_raise_the_load() {
        let e = ep(1);
        let now = Instant::now();
        let before = e.load_at(now);
        let guard = e.start();
        assert!(e.load_at(now) > before);
        drop(guard);
        assert_eq!(e.load_at(now), before);
    }

    #[test]
    fn a_penalty_decays_while_the_endpoint_is_not_picked() {
        let (recovered, busy) = (ep(1), ep(2));
        recovered.observe(Duration::from_secs(1));
        busy.observe(Duration::from_millis(5));
        let now = Instant::now();
        assert!(recovered.load_at(now) > busy.load_at(now));
        // A minute later, with `busy` answering in 5 ms all along, the penalty has decayed
        // below it and p2c tries the recovered endpoint again.
        let later = now + Duration::from_secs(60);
        busy.ewma().stamp = later;
        assert!(recovered.load_at(later) < busy.load_at(later));
    }

    #[test]
    fn peaks_count_at_once_and_decay_slowly() {
        let e = ep(1);
        e.observe(Duration::from_millis(200));
        assert!(e.load() >= 199e6);
        e.observe(Duration::from_millis(1));
        assert!(
            e.load() > 150e6,
            "a dip right after a peak barely moves the estimate"
        );
    }
}
