//! A connection that counts its bytes into two counters: added every 64 KiB and at close, so
//! that the request path does not touch a shared atomic on every read and write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FLUSH_EVERY: u64 = 64 << 10;

pub struct Counted<S> {
    inner: S,
    read: u64,
    written: u64,
    read_total: Counter,
    written_total: Counter,
    /// Counted once when the connection is dropped.
    closed: Counter,
}

impl<S> Counted<S> {
    pub fn new(inner: S, read_total: Counter, written_total: Counter, closed: Counter) -> Self {
        Counted {
            inner,
            read: 0,
            written: 0,
            read_total,
            written_total,
            closed,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.read_total.inc_by(self.read);
        self.written_total.inc_by(self.written);
        self.closed.inc();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read += n;
        if self.read >= FLUSH_EVERY {
            let read = std::mem::take(&mut self.read);
            self.read_total.inc_by(read);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &poll {
            self.written += *n as u64;
            if self.written >= FLUSH_EVERY {
                let written = std::mem::take(&mut self.written);
                self.written_total.inc_by(written);
            }
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &poll {
            self.written += *n as u64;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_and_the_close_are_counted() {
        let (read, written, closed) = (Counter::default(), Counter::default(), Counter::default());
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Counted::new(a, read.clone(), written.clone(), closed.clone());
        c.write_all(&[1u8; 100_000]).await.unwrap();
        let mut got = vec![0u8; 100_000];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(b"hello").await.unwrap();
        let mut five = [0u8; 5];
        c.read_exact(&mut five).await.unwrap();
        assert!(written.get() >= FLUSH_EVERY, "flushed while open");
        drop(c);
        assert_eq!(written.get(), 100_000);
        assert_eq!(read.get(), 5);
        assert_eq!(closed.get(), 1);
    }
}
