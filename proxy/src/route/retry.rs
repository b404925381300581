//! Retries: which failed attempts are sent again, how long to wait between attempts, and the
//! budget that keeps retries from multiplying load when everything fails (Finagle's and
//! Linkerd's retry budget: retries may add at most `ratio` of the live requests, plus a small
//! floor per second, over a sliding window).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Response;
use pillion_proto::discovery::v1 as pb;
use rand::Rng;

use crate::http::errors::ProxyError;

/// A rule's retry policy, compiled from the control plane's message.
pub struct RetryPolicy {
    pub max_retries: u32,
    http_statuses: Vec<u16>,
    grpc_statuses: Vec<u32>,
    on_reset: bool,
    pub per_try_timeout: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Longest request body kept for a replay.
    pub max_body_bytes: usize,
    pub source: String,
    pub budget: std::sync::Arc<Budget>,
}

/// Why an attempt is worth sending again, for metrics and spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Status(u16),
    Grpc(u32),
    Reset,
}

impl RetryReason {
    pub fn label(self) -> String {
        match self {
            RetryReason::Status(s) => s.to_string(),
            RetryReason::Grpc(c) => format!("grpc-{c}"),
            RetryReason::Reset => "reset".into(),
        }
    }
}

impl RetryPolicy {
    /// `budget`: the rule's budget carried over from the previous snapshot, so that an update
    /// does not refill it.
    pub fn from_pb(p: &pb::RetryPolicy, budget: std::sync::Arc<Budget>) -> RetryPolicy {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        RetryPolicy {
            max_retries: p.max_retries.min(10),
            http_statuses: p
                .http_statuses
                .iter()
                .filter_map(|s| u16::try_from(*s).ok())
                .collect(),
            grpc_statuses: p.grpc_statuses.clone(),
            on_reset: p.on_reset,
            per_try_timeout: ms(p.per_try_timeout_ms),
            backoff_base: Duration::from_millis(p.backoff_base_ms),
            backoff_max: Duration::from_millis(p.backoff_max_ms.max(p.backoff_base_ms)),
            max_body_bytes: usize::try_from(p.max_body_bytes).unwrap_or(usize::MAX),
            source: p.source.clone(),
            budget,
        }
    }

    /// Whether a response asks to be retried: a listed status, or a listed gRPC status in a
    /// trailers-only response (a status in trailers after a body comes too late).
    pub fn retryable_response<B>(&self, resp: &Response<B>) -> Option<RetryReason> {
        let status = resp.status().as_u16();
        if self.http_statuses.contains(&status) {
            return Some(RetryReason::Status(status));
        }
        let grpc = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())?;
        self.grpc_statuses
            .contains(&grpc)
            .then_some(RetryReason::Grpc(grpc))
    }

    /// Whether an attempt that got no response is retried: the connection or stream failed,
    /// or the attempt's own timeout passed.
    pub fn retryable_error(&self, e: &ProxyError) -> Option<RetryReason> {
        let reset = matches!(
            e,
            ProxyError::Upstream(_)
                | ProxyError::Timeout
                | ProxyError::Connect(..)
                | ProxyError::ConnectTimeout(_)
                | ProxyError::Tls(..)
        );
        (self.on_reset && reset).then_some(RetryReason::Reset)
    }

    /// Full-jitter exponential backoff before retry `n` (1 for the first): a random wait up to
    /// base × 2^(n-1), capped, so that clients failing together do not retry together.
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(self.backoff_max);
        if ceiling.is_zero() {
            return ceiling;
        }
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }
}

/// Seconds the budget looks back over.
const WINDOW_SECS: usize = 10;

/// Requests and retries over the last [`WINDOW_SECS`] seconds, in one-second buckets.
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    epoch: Instant,
    buckets: Mutex<[Bucket; WINDOW_SECS]>,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u32,
    retries: u32,
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Budget {
        Budget {
            ratio: ratio.clamp(0.0, 1.0),
            min_per_second,
            epoch: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_SECS]),
        }
    }

    pub fn from_pb(p: &pb::RetryPolicy) -> Budget {
        Budget::new(p.budget_ratio, p.budget_min_per_second)
    }

    /// Whether the budget was built from the same settings (else an update replaces it).
    pub fn same_settings(&self, p: &pb::RetryPolicy) -> bool {
        self.ratio == p.budget_ratio.clamp(0.0, 1.0)
            && self.min_per_second == p.budget_min_per_second
    }

    /// Runs `f` on the window at `now`, with the index of the current second's bucket.
    fn with_window<T>(&self, now: Instant, f: impl FnOnce(&mut [Bucket], usize) -> T) -> T {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let slot = (second % WINDOW_SECS as u64) as usize;
        if buckets[slot].second != second {
            buckets[slot] = Bucket {
                second,
                ..Bucket::default()
            };
        }
        // Buckets older than the window are left to be overwritten, and not counted.
        for b in buckets.iter_mut() {
            if second.saturating_sub(b.second) >= WINDOW_SECS as u64 {
                *b = Bucket::default();
            }
        }
        f(&mut buckets[..], slot)
    }

    /// Counts one request (its first attempt).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    fn deposit_at(&self, now: Instant) {
        self.with_window(now, |b, slot| {
            b[slot].requests = b[slot].requests.saturating_add(1)
        });
    }

    /// Takes one retry from the budget, if it allows one.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let (ratio, floor) = (self.ratio, self.min_per_second);
        self.with_window(now, |buckets, slot| {
            let (requests, retries) = buckets.iter().fold((0u64, 0u64), |(q, r), b| {
                (q + u64::from(b.requests), r + u64::from(b.retries))
            });
            let allowed = ratio * requests as f64 + f64::from(floor) * WINDOW_SECS as f64;
            if (retries as f64) < allowed {
                buckets[slot].retries = buckets[slot].retries.saturating_add(1);
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(statuses: &[u32], grpc: &[u32], reset: bool) -> RetryPolicy {
        let p = pb::RetryPolicy {
            max_retries: 2,
            http_statuses: statuses.to_vec(),
            grpc_statuses: grpc.to_vec(),
            on_reset: reset,
            backoff_base_ms: 10,
            backoff_max_ms: 40,
            ..Default::default()
        };
        RetryPolicy::from_pb(&p, std::sync::Arc::new(Budget::from_pb(&p)))
    }

    #[test]
    fn listed_statuses_and_trailers_only_grpc_statuses_are_retried() {
        let p = policy(&[503], &[14], false);
        let resp = |status: u16, grpc: Option<&str>| {
            let mut r = Response::builder().status(status);
            if let Some(g) = grpc {
                r = r.header("grpc-status", g);
            }
            r.body(()).unwrap()
        };
        assert_eq!(
            p.retryable_response(&resp(503, None)),
            Some(RetryReason::Status(503))
        );
        assert_eq!(p.retryable_response(&resp(500, None)), None);
        assert_eq!(
            p.retryable_response(&resp(200, Some("14"))),
            Some(RetryReason::Grpc(14))
        );
        assert_eq!(p.retryable_response(&resp(200, Some("13"))), None);
        assert_eq!(p.retryable_error(&ProxyError::Timeout), None);
        let p = policy(&[], &[], true);
        assert_eq!(
            p.retryable_error(&ProxyError::Timeout),
            Some(RetryReason::Reset)
        );
        assert_eq!(p.retryable_error(&ProxyError::NoEndpoints), None);
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_cap() {
        let p = policy(&[], &[], false);
        for _ in 0..100 {
            assert!(p.backoff(1) <= Duration::from_millis(10));
            assert!(p.backoff(2) <= Duration::from_millis(20));
            assert!(p.backoff(9) <= Duration::from_millis(40));
        }
        assert!((0..100).any(|_| p.backoff(3) > Duration::from_millis(20)));
    }

    #[test]
    fn the_budget_allows_the_floor_plus_a_share_of_requests() {
        let b = Budget::new(0.2, 1);
        let now = b.epoch;
        for _ in 0..100 {
            b.deposit_at(now);
        }
        // 10 s × 1/s floor + 20 % of 100 requests.
        let allowed = (0..1000).take_while(|_| b.withdraw_at(now)).count();
        assert_eq!(allowed, 30);
        // Once the window has passed, the old requests and retries no longer count.
        let later = now + Duration::from_secs(11);
        let allowed = (0..1000).take_while(|_| b.withdraw_at(later)).count();
        assert_eq!(allowed, 10);
    }
}
