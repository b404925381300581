//! Drives an HTTP/2 connection one scheduling round after it is woken, so that its writes carry
//! every stream that became ready in that round.
//!
//! An HTTP/2 connection is one task; each stream is another. When a stream sends its response
//! (or request) it wakes the connection's task, and the runtime runs a task woken that way next:
//! the connection writes that one stream's frames in a `writev` of their own, then the next
//! stream's, and so on. Polled one round later instead, after the other runnable streams, it
//! writes them all at once. Measured under `h2load -c 10 -m 10` through one hop: one `writev`
//! per request before (21,149 for 20,000 requests, `strace -c -f`), HAProxy about 0.23.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// `inner`, polled only on every second wake-up: the first re-schedules the task behind
    /// the ones already runnable (a task that wakes itself while running yields its turn).
    pub struct Batched<F> {
        #[pin]
        inner: F,
        deferred: bool,
    }
}

impl<F> Batched<F> {
    pub fn new(inner: F) -> Self {
        Batched {
            inner,
            deferred: false,
        }
    }
}

impl<F: Future> Future for Batched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !*this.deferred {
            *this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        *this.deferred = false;
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A task that becomes runnable is polled after the tasks already runnable, not before.
    #[tokio::test(flavor = "current_thread")]
    async fn runs_after_the_tasks_already_runnable() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let batched = {
            let order = order.clone();
            tokio::spawn(Batched::new(async move {
                let _ = rx.await;
                order.lock().unwrap().push("connection");
            }))
        };
        tokio::task::yield_now().await;
        // Wake the connection, then make three more tasks runnable: all three run first.
        let _ = tx.send(());
        let mut streams = Vec::new();
        for name in ["a", "b", "c"] {
            let order = order.clone();
            streams.push(tokio::spawn(async move {
                order.lock().unwrap().push(name);
            }));
        }
        batched.await.unwrap();
        for s in streams {
            s.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a", "b", "c", "connection"]);
    }
}
