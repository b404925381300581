//! Which backend of a rule takes one request, by weight.

use std::sync::{Arc, Mutex};

use crate::balance::Endpoint;

pub struct Backend {
    pub weight: u32,
    pub target: BackendTarget,
    /// HTTPRoute `backendRefs[].filters`: only for requests sent here.
    pub filters: Option<Box<crate::route::filters::Filters>>,
}

pub enum BackendTarget {
    Service {
        name: Arc<str>,
        endpoints: Vec<Arc<Endpoint>>,
    },
    Failure {
        status: u16,
        reason: String,
    },
}

impl BackendTarget {
    pub fn name(&self) -> Arc<str> {
        match self {
            BackendTarget::Service { name, .. } => name.clone(),
            BackendTarget::Failure { .. } => Arc::from(""),
        }
    }
}

/// Weighted choice by dealing from a shuffled deck: each deck holds every backend as many times
/// as its weight (reduced by the common divisor), and is reshuffled when dealt out. So every
/// deck gives each backend exactly its share (a 90/10 split is 9/1 over every ten requests), and
/// the order within a deck is random, so a client whose requests alternate between two kinds
/// does not see all of one backend's share land on one kind (as a fixed round-robin order would).
///
/// Weights whose reduced sum exceeds [`MAX_DECK`] (many backends, or one huge weight beside
/// small ones) are not scaled into a deck, which would flatten them: each request then draws a
/// backend at random with probability exactly weight / sum (a binary search over cumulative
/// weights), so shares hold for any weights, within the usual sampling error.
pub struct Split {
    pub backends: Vec<Backend>,
    pick: Pick,
}

enum Pick {
    Deck(Mutex<Deck>),
    /// Cumulative weights (the last is the sum) and the backend index of each.
    Sample {
        cumulative: Vec<u64>,
        index: Vec<u32>,
    },
}

struct Deck {
    cards: Vec<u32>,
    next: usize,
}

/// The largest deck dealt in order (4 bytes a card).
pub const MAX_DECK: u64 = 10_000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Split {
    pub fn new(backends: Vec<Backend>) -> Self {
        let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.weight)).collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let counts: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
        let sum: u64 = counts.iter().sum();
        let pick = if sum > MAX_DECK {
            let mut cumulative = Vec::with_capacity(counts.len());
            let mut index = Vec::with_capacity(counts.len());
            let mut total = 0u64;
            for (i, &c) in counts.iter().enumerate() {
                if c > 0 {
                    total += c;
                    cumulative.push(total);
                    index.push(i as u32);
                }
            }
            Pick::Sample { cumulative, index }
        } else {
            let mut cards = Vec::with_capacity(sum as usize);
            for (i, &c) in counts.iter().enumerate() {
                cards.extend(std::iter::repeat_n(i as u32, c as usize));
            }
            let next = cards.len();
            Pick::Deck(Mutex::new(Deck { cards, next }))
        };
        Split { backends, pick }
    }

    pub fn pick(&self) -> Option<&Backend> {
        let card = match &self.pick {
            Pick::Deck(deck) => {
                let mut deck = match deck.lock() {
                    Ok(d) => d,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if deck.cards.is_empty() {
                    return None;
                }
                if deck.next >= deck.cards.len() {
                    use rand::seq::SliceRandom;
                    deck.cards.shuffle(&mut rand::rng());
                    deck.next = 0;
                }
                let card = deck.cards[deck.next];
                deck.next += 1;
                card
            }
            Pick::Sample { cumulative, index } => {
                use rand::Rng;
                let total = *cumulative.last()?;
                let x = rand::rng().random_range(0..total);
                // The first cumulative weight above x.
                let i = cumulative.partition_point(|&c| c <= x);
                *index.get(i)?
            }
        };
        self.backends.get(card as usize)
    }

    /// The backend for a sticky key: weighted rendezvous hashing (each backend scores
    /// `-ln(u) / weight` with `u` a hash of key and backend name; the lowest wins). Every proxy
    /// makes the same choice for a key, each backend gets its weight's share of keys, and a
    /// weight change moves only the keys it must.
    pub fn pick_sticky(&self, key: &[u8]) -> Option<&Backend> {
        let mut best: Option<(f64, &Backend)> = None;
        for (i, b) in self.backends.iter().enumerate() {
            if b.weight == 0 {
                continue;
            }
            let h = match &b.target {
                BackendTarget::Service { name, .. } => stable_hash(key, name.as_bytes()),
                BackendTarget::Failure { .. } => stable_hash(key, &(i as u64).to_le_bytes()),
            };
            // 53 random bits in (0, 1].
            let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let score = -u.ln() / f64::from(b.weight);
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, b));
            }
        }
        best.map(|(_, b)| b)
    }
}

/// A hash that is the same in every proxy and every build: FNV-1a over the key, a separator
/// and the backend, then a 64-bit finalizer (splitmix64) to spread FNV's weak low bits.
fn stable_hash(key: &[u8], backend: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.iter().chain(&[0xff]).chain(backend) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure_backend(weight: u32, status: u16) -> Backend {
        Backend {
            weight,
            target: BackendTarget::Failure {
                status,
                reason: String::new(),
            },
            filters: None,
        }
    }

    fn shares(split: &Split, n: usize) -> Vec<usize> {
        let mut counts = vec![0; split.backends.len()];
        for _ in 0..n {
            let b = split.pick().unwrap();
            let BackendTarget::Failure { status, .. } = b.target else {
                panic!()
            };
            counts[status as usize] += 1;
        }
        counts
    }

    #[test]
    fn split_is_exact_over_every_deck() {
        let split = Split::new(vec![failure_backend(90, 0), failure_backend(10, 1)]);
        for _ in 0..20 {
            assert_eq!(shares(&split, 10), vec![9, 1]);
        }
        assert_eq!(shares(&split, 1000), vec![900, 100]);

        let split = Split::new(vec![
            failure_backend(1, 0),
            failure_backend(0, 1),
            failure_backend(2, 2),
        ]);
        assert_eq!(shares(&split, 300), vec![100, 0, 200]);
    }

    /// Shares of many backends, or of weights too large for a deck, hold for any weights.
    #[test]
    fn shares_hold_for_many_backends_and_huge_weights() {
        // 10,000 backends: 5,000 of weight 9 and 5,000 of weight 1 (was 51/49).
        let backends: Vec<Backend> = (0..10_000)
            .map(|i| failure_backend(if i < 5000 { 9 } else { 1 }, if i < 5000 { 0 } else { 1 }))
            .collect();
        let split = Split::new(backends);
        let n = 100_000;
        let heavy = (0..n)
            .filter(|_| match split.pick().unwrap().target {
                BackendTarget::Failure { status, .. } => status == 0,
                _ => false,
            })
            .count();
        // Expected 90 %; five standard deviations is 0.5 %.
        assert!((89_500..=90_500).contains(&heavy), "{heavy} of {n}");

        // One backend of weight 1,000,000 against 2,000 of weight 1 (was 66 % to the small).
        let mut backends = vec![failure_backend(1_000_000, 0)];
        backends.extend((0..2000).map(|_| failure_backend(1, 1)));
        let split = Split::new(backends);
        let small = (0..n)
            .filter(|_| match split.pick().unwrap().target {
                BackendTarget::Failure { status, .. } => status == 1,
                _ => false,
            })
            .count();
        // Expected 2000 / 1,002,000 = 0.2 %: about 200 of 100,000.
        assert!((100..=320).contains(&small), "{small} of {n}");

        // Exact decks still for sums up to the deck size.
        let split = Split::new(vec![failure_backend(9_999, 0), failure_backend(1, 1)]);
        assert_eq!(shares(&split, 10_000), vec![9_999, 1]);
    }

    #[test]
    fn alternating_callers_each_get_the_small_share() {
        let split = Split::new(vec![failure_backend(90, 0), failure_backend(10, 1)]);
        let mut small_on_odd = 0;
        for i in 0..1000 {
            let BackendTarget::Failure { status, .. } = split.pick().unwrap().target else {
                panic!()
            };
            if status == 1 && i % 2 == 1 {
                small_on_odd += 1;
            }
        }
        // 100 small picks in all; a fixed order would put all or none of them on odd requests.
        assert!((20..=80).contains(&small_on_odd), "{small_on_odd}");
    }

    fn service(name: &str, weight: u32) -> Backend {
        Backend {
            weight,
            target: BackendTarget::Service {
                name: Arc::from(name),
                endpoints: Vec::new(),
            },
            filters: None,
        }
    }

    fn sticky_choices(split: &Split, users: usize) -> Vec<Arc<str>> {
        (0..users)
            .map(|u| {
                split
                    .pick_sticky(format!("user-{u}").as_bytes())
                    .unwrap()
                    .target
                    .name()
            })
            .collect()
    }

    #[test]
    fn sticky_keys_follow_the_weights_and_a_change_moves_few() {
        let before = Split::new(vec![service("v1", 90), service("v2", 10)]);
        let users = 20_000;
        let a = sticky_choices(&before, users);
        // The same key, the same backend.
        assert_eq!(a, sticky_choices(&before, users));
        let v2 = a.iter().filter(|n| &***n == "v2").count();
        assert!((1_700..2_300).contains(&v2), "v2 got {v2} of {users}");
        let after = Split::new(vec![service("v1", 50), service("v2", 50)]);
        let b = sticky_choices(&after, users);
        let moved: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x != y).collect();
        // 40 % of users must move to v2; none moves the other way.
        assert!(moved.iter().all(|(x, y)| &***x == "v1" && &***y == "v2"));
        let share = moved.len() as f64 / users as f64;
        assert!((0.37..0.43).contains(&share), "{share}");
        // A backend at weight 0 gets no key.
        let off = Split::new(vec![service("v1", 1), service("v2", 0)]);
        assert!(sticky_choices(&off, 1000).iter().all(|n| &**n == "v1"));
    }

    const PINNED: u64 = 0xd3bd_072d_d08a_3889;

    #[test]
    fn the_hash_is_fixed() {
        // Other proxies (and other builds) must choose alike: the function may never change.
        assert_eq!(
            stable_hash(b"user-1", b"web-v1"),
            stable_hash(b"user-1", b"web-v1")
        );
        assert_ne!(
            stable_hash(b"user-1", b"web-v1"),
            stable_hash(b"user-1", b"web-v2")
        );
        assert_eq!(
            stable_hash(b"user-1", b"web-v1"),
            PINNED,
            "{:#x}",
            stable_hash(b"user-1", b"web-v1")
        );
    }
}
