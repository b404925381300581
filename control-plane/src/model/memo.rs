//! Answers computed once per model: thousands of watches on the same destination share one.
//!
//! Every published model wakes every watch; each used to resolve, encode and hash its answer
//! on its own. With 1,000 proxies each watching the same ten destinations that was 10,000
//! resolutions per change for 1,000 distinct answers (`cargo bench -p pillion-control-plane
//! --bench scale`: resolving was most of the control plane's CPU time). The memo lives in the
//! model, so a new model starts empty and nothing is ever stale.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

type Entries = HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>;

#[derive(Default)]
pub struct Memo(Mutex<Entries>);

impl Memo {
    /// The answer of type `T` for `key`, computed by `compute` if no watch asked before.
    /// `compute` runs outside the lock: two first askers may both compute (same result), but
    /// no watch waits on another's resolution.
    pub fn get_or_compute<T: Any + Send + Sync>(
        &self,
        key: &str,
        compute: impl FnOnce() -> T,
    ) -> Arc<T> {
        let id = (TypeId::of::<T>(), key.to_string());
        if let Some(hit) = self.lock().get(&id).cloned()
            && let Ok(hit) = hit.downcast::<T>()
        {
            return hit;
        }
        let value = Arc::new(compute());
        self.lock().insert(id, value.clone());
        value
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map holds only finished answers; a panic elsewhere cannot leave one half-made.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
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
        write!(f, "Memo({} answers)", self.lock().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn computes_once_per_key_and_type() {
        let memo = Memo::default();
        let calls = AtomicUsize::new(0);
        let count = || {
            calls.fetch_add(1, Ordering::Relaxed);
            7u32
        };
        assert_eq!(*memo.get_or_compute("a", count), 7);
        assert_eq!(*memo.get_or_compute("a", count), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(*memo.get_or_compute("b", count), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // Another type under the same key is another answer.
        assert_eq!(*memo.get_or_compute("a", || "text"), "text");
        assert_eq!(*memo.get_or_compute("a", count), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_clone_starts_empty() {
        let memo = Memo::default();
        memo.get_or_compute("a", || 1u8);
        let copy = memo.clone();
        assert_eq!(*copy.get_or_compute("a", || 2u8), 2);
    }
}
