//! Fault injection: a share of a rule's requests delayed, a share answered with an error
//! without reaching a backend (pillion.dev/v1alpha1 FaultInjection). The calling proxy injects
//! them, so the caller sees exactly what a failing or slow backend would look like to it.

use std::time::Duration;

use pillion_proto::discovery::v1 as pb;
use rand::Rng;

pub struct Fault {
    abort_ppm: u32,
    pub abort_status: u16,
    /// 0: the gRPC status that matches `abort_status`.
    pub abort_grpc: u8,
    delay_ppm: u32,
    pub delay: Duration,
    pub source: String,
}

/// What to do to one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: bool,
}

impl Fault {
    pub fn from_pb(f: &pb::Fault) -> Fault {
        Fault {
            abort_ppm: f.abort_ppm.min(1_000_000),
            abort_status: u16::try_from(f.abort_http_status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .unwrap_or(503),
            abort_grpc: u8::try_from(f.abort_grpc_status).unwrap_or(0),
            delay_ppm: f.delay_ppm.min(1_000_000),
            delay: Duration::from_millis(f.delay_ms),
            source: f.source.clone(),
        }
    }

    /// Rolls for one request: the delay and the abort are decided independently, as their
    /// percentages are.
    pub fn decide(&self) -> Decision {
        let mut rng = rand::rng();
        let mut roll = |ppm: u32| ppm > 0 && rng.random_range(0..1_000_000) < ppm;
        Decision {
            delay: roll(self.delay_ppm).then_some(self.delay),
            abort: roll(self.abort_ppm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_percentages() {
        let f = Fault::from_pb(&pb::Fault {
            abort_ppm: 100_000,
            abort_http_status: 500,
            delay_ppm: 500_000,
            delay_ms: 7,
            ..Default::default()
        });
        let n = 100_000;
        let decisions: Vec<Decision> = (0..n).map(|_| f.decide()).collect();
        let aborts = decisions.iter().filter(|d| d.abort).count();
        let delays = decisions.iter().filter(|d| d.delay.is_some()).count();
        assert!((9_000..11_000).contains(&aborts), "{aborts}");
        assert!((48_000..52_000).contains(&delays), "{delays}");
        assert!(
            decisions
                .iter()
                .flat_map(|d| d.delay)
                .all(|d| d == Duration::from_millis(7))
        );
        let none = Fault::from_pb(&pb::Fault::default());
        assert!((0..1000).all(|_| none.decide() == Decision::default()));
    }
}
