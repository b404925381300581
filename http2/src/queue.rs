//! A stream's queue of body chunks, which holds its first chunk in place.
//!
//! Most bodies a proxy passes on are one chunk (a response that fits one DATA frame): a
//! `VecDeque` allocates on its first push and frees with the stream, twice a request through
//! one hop (the response on the client side, again on the server side). This one allocates
//! only for a second chunk queued behind a first.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Default)]
pub(crate) struct Chunks {
    /// The oldest chunk; `None` only when the queue is empty.
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
}

impl Chunks {
    pub fn push_back(&mut self, chunk: Bytes) {
        if self.first.is_none() {
            self.first = Some(chunk);
        } else {
            self.rest.push_back(chunk);
        }
    }

    pub fn pop_front(&mut self) -> Option<Bytes> {
        let first = self.first.take();
        self.first = self.rest.pop_front();
        first
    }

    pub fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.first.as_mut()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Empties the queue, returning the bytes it held.
    pub fn clear(&mut self) -> usize {
        let n = self.first.take().map_or(0, |b| b.len());
        n + self.rest.drain(..).map(|b| b.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_the_first_slot() {
        let mut q = Chunks::default();
        assert!(q.is_empty());
        for s in ["a", "bb", "ccc"] {
            q.push_back(Bytes::from(s));
        }
        assert_eq!(q.pop_front().as_deref(), Some(&b"a"[..]));
        q.push_back(Bytes::from("dddd"));
        if let Some(front) = q.front_mut() {
            let _ = front.split_to(1);
        }
        assert_eq!(q.pop_front().as_deref(), Some(&b"b"[..]));
        assert_eq!(q.pop_front().as_deref(), Some(&b"ccc"[..]));
        assert!(!q.is_empty());
        assert_eq!(q.clear(), 4);
        assert!(q.is_empty());
        assert_eq!(q.pop_front(), None);
    }
}
