//! Answers computed once per model: thousands of watches on the same destination share one.
//!
//! Every published model wakes every watch; each used to resolve, encode and hash its answer
//! on its own. With 1,000 proxies each watching the same ten destinations that was 10,000
//! resolutions per change for 1,000 distinct answers (`cargo bench -p pillion-control-plane
//! --bench scale`: resolving was most of the control plane's CPU time). The memo lives in the
//! model, so a new model starts empty and nothing is ever stale.
//!
//! The memo holds its answers weakly: the watches that use an answer keep it alive, and an
//! answer no watch holds any more (a proxy asked once for `example.com:443` and went away) is
//! dropped, its entry pruned. A model that stays in force for weeks while watches come and go
//! does not grow with every name ever asked.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

type Entries = HashMap<(TypeId, String), Weak<dyn Any + Send + Sync>>;

/// Entries are pruned when there are more than this, and then each time their number doubles.
const PRUNE_FROM: usize = 1024;

#[derive(Default)]
pub struct Memo(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    entries: Entries,
    prune_at: usize,
}

impl Memo {
    /// The answer of type `T` for `key`, computed by `compute` unless a watch holds it already.
    /// `compute` runs outside the lock: two first askers may both compute (same result), but
    /// no watch waits on another's resolution. Keep the returned `Arc` for as long as the
    /// answer is in use: that is what keeps it in the memo.
    pub fn get_or_compute<T: Any + Send + Sync>(
        &self,
        key: &str,
        compute: impl FnOnce() -> T,
    ) -> Arc<T> {
        let id = (TypeId::of::<T>(), key.to_string());
        let held = self.lock().entries.get(&id).and_then(Weak::upgrade);
        if let Some(hit) = held.and_then(|a| a.downcast::<T>().ok()) {
            return hit;
        }
        let value = Arc::new(compute());
        let as_any: Arc<dyn Any + Send + Sync> = value.clone();
        let mut inner = self.lock();
        inner.entries.insert(id, Arc::downgrade(&as_any));
        if inner.entries.len() > inner.prune_at.max(PRUNE_FROM) {
            inner.entries.retain(|_, w| w.strong_count() > 0);
            inner.prune_at = inner.entries.len() * 2;
        }
        value
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map holds only finished answers; a panic elsewhere cannot leave one half-made.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// A copy of a model starts with an empty memo: its answers may differ.
impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memo({} answers)", self.lock().entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn computes_once_per_key_and_type_while_held() {
        let memo = Memo::default();
        let calls = AtomicUsize::new(0);
        let count = || {
            calls.fetch_add(1, Ordering::Relaxed);
            7u32
        };
        let a = memo.get_or_compute("a", count);
        assert_eq!(*memo.get_or_compute("a", count), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let b = memo.get_or_compute("b", count);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // Another type under the same key is another answer.
        let text = memo.get_or_compute("a", || "text");
        assert_eq!(*text, "text");
        assert_eq!(*memo.get_or_compute("a", count), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // No watch holds `a` any more: asked again, it is computed again.
        drop(a);
        assert_eq!(*memo.get_or_compute("a", count), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        drop(b);
    }

    #[test]
    fn answers_no_one_holds_are_pruned() {
        let memo = Memo::default();
        let kept: Vec<Arc<usize>> = (0..10)
            .map(|i| memo.get_or_compute(&format!("kept-{i}"), || i))
            .collect();
        // A stream of names asked once each, by watches that went away.
        for i in 0..100_000 {
            drop(memo.get_or_compute(&format!("once-{i}"), || i));
        }
        assert!(memo.len() <= 2 * PRUNE_FROM + 10, "{} entries", memo.len());
        for (i, k) in kept.iter().enumerate() {
            assert_eq!(
                *memo.get_or_compute(&format!("kept-{i}"), || usize::MAX),
                **k
            );
        }
    }

    #[test]
    fn a_clone_starts_empty() {
        let memo = Memo::default();
        let _held = memo.get_or_compute("a", || 1u8);
        let copy = memo.clone();
        assert_eq!(*copy.get_or_compute("a", || 2u8), 2);
    }
}
