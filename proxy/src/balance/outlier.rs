//! Outlier ejection: an endpoint that fails several times in a row gets no traffic for a while
//! (doubling with each ejection in a row), then one request probes it: a success brings it
//! back, a failure ejects it again for longer. The balancer never ejects the last endpoints
//! of a backend: when every endpoint is ejected, it picks among them all.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How ejection behaves, set once per process from `PILLION_OUTLIER_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Failures in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(60),
        }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Sets the process's ejection settings; the first call wins (one proxy per process).
pub fn configure(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

fn settings() -> Settings {
    *SETTINGS.get_or_init(Settings::default)
}

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One endpoint's failure record.
#[derive(Default)]
pub struct Outlier {
    failures: AtomicU32,
    /// Milliseconds since the process epoch until which the endpoint is ejected; 0: never
    /// ejected since its last success (no clock read on the request path then).
    ejected_until: AtomicU64,
    /// Ejections in a row without a success between them.
    ejections: AtomicU32,
}

impl Outlier {
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
            self.ejected_until.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; true when it ejects the endpoint.
    pub fn failure(&self) -> bool {
        self.failure_with(&settings())
    }

    fn failure_with(&self, s: &Settings) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if s.consecutive_failures == 0 || n < s.consecutive_failures || self.is_ejected() {
            return false;
        }
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let period = s.base_ejection.saturating_mul(1 << k).min(s.max_ejection);
        self.ejected_until
            .store(now_ms() + period.as_millis() as u64, Ordering::Relaxed);
        // After the ejection one more failure (the probe's) ejects it again.
        self.failures
            .store(s.consecutive_failures - 1, Ordering::Relaxed);
        crate::telemetry::metrics::OUTLIER_EJECTIONS.inc();
        true
    }

    /// For `/config`: milliseconds of ejection left, 0 when not ejected.
    pub fn ejected_for_ms(&self) -> u64 {
        self.ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base_ms: u64) -> Settings {
        Settings {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(base_ms),
            max_ejection: Duration::from_millis(base_ms * 4),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let s = settings(60_000);
        let o = Outlier::default();
        assert!(!o.failure_with(&s));
        assert!(!o.failure_with(&s));
        o.success();
        assert!(!o.failure_with(&s));
        assert!(!o.failure_with(&s));
        assert!(!o.is_ejected());
        assert!(o.failure_with(&s));
        assert!(o.is_ejected());
        assert!(o.ejected_for_ms() > 59_000);
    }

    #[test]
    fn after_the_ejection_one_failed_probe_ejects_again_for_longer() {
        let s = settings(0);
        let o = Outlier::default();
        for _ in 0..3 {
            o.failure_with(&s);
        }
        // A zero-length ejection is over at once: the next failure is the probe's.
        assert!(o.failure_with(&s));
        assert_eq!(o.ejections.load(Ordering::Relaxed), 2);
        let s = settings(50_000);
        assert!(o.failure_with(&s));
        // Third ejection in a row: 4 × base, capped at max.
        assert!(o.ejected_for_ms() > 190_000);
    }

    #[test]
    fn off_when_the_threshold_is_zero() {
        let s = Settings {
            consecutive_failures: 0,
            ..Settings::default()
        };
        let o = Outlier::default();
        assert!((0..100).all(|_| !o.failure_with(&s)));
    }
}
