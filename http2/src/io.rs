//! The task side of a connection: reading its socket and applying the frames read, writing
//! what the connection queued, pinging the peer, ending when there is nothing left to do.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::{Conn, ConnError};
use crate::frame::{self, Reason};

/// Stop reading while this much is waiting to be written: a peer that sends PINGs or SETTINGS
/// without reading the answers cannot make us buffer without end.
const WRITE_HIGH_WATER: usize = crate::conn::OUT_HIGH_WATER;
/// What one read asks of the socket.
const READ_SIZE: usize = 16 << 10;

pub(crate) type Shared = Arc<Mutex<Conn>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, Conn> {
    // A panic while holding the lock leaves the connection state as it was at the panic;
    // carrying on with it is no worse than failing every stream of the connection.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Driver<I> {
    io: I,
    pub shared: Shared,
    read: BytesMut,
    /// Bytes taken from the connection's buffer, being written.
    writing: BytesMut,
    preface_seen: bool,
    read_closed: bool,
    /// A write failed: what is queued from then on is dropped.
    write_closed: bool,
    /// Every so often a PING; `true` while one is unanswered.
    ping: Option<(Duration, Pin<Box<tokio::time::Sleep>>, bool)>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Driver<I> {
    /// A driver for `conn` on `io`: a server first reads the client's preface.
    pub fn new(io: I, conn: Conn, server: bool, keep_alive: Option<Duration>) -> Self {
        Driver {
            io,
            shared: Arc::new(Mutex::new(conn)),
            read: BytesMut::with_capacity(READ_SIZE),
            writing: BytesMut::new(),
            preface_seen: !server,
            read_closed: false,
            write_closed: false,
            ping: keep_alive.map(|every| (every, Box::pin(tokio::time::sleep(every)), false)),
        }
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        loop {
            let mut progress = false;
            // Read while there is room to answer.
            let backlog = self.writing.len() + lock(&self.shared).out.len();
            if !self.read_closed && backlog < WRITE_HIGH_WATER {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) => self.read_closed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            self.poll_keep_alive(cx);
            let mut write_stuck = false;
            match self.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => write_stuck = true,
            }
            let (done, error) = {
                let mut conn = lock(&self.shared);
                conn.unwritten = self.writing.len();
                if conn.resume_sending() {
                    progress = true;
                }
                conn.io_waker = Some(cx.waker().clone());
                let pending = !self.writing.is_empty() || !conn.out.is_empty();
                let error = conn.error.clone();
                let over = conn.is_done() || error.is_some() || self.read_closed;
                // A failed connection whose peer takes nothing more (it stopped reading: the
                // socket is full) ends without its last frames. Waiting for them would hold
                // it, its streams and their buffers for as long as the peer keeps its
                // window shut, which TCP allows for ever.
                (
                    over && (!pending || (error.is_some() && write_stuck)),
                    error,
                )
            };
            if done {
                // Whatever is left of the streams ends with the connection.
                lock(&self.shared).close(ConnError::Closed);
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                return Poll::Ready(match error {
                    Some(ConnError::Local { reason, .. }) if reason == Reason::NO_ERROR => Ok(()),
                    Some(ConnError::Remote(Reason::NO_ERROR)) | None => Ok(()),
                    Some(e) => Err(e),
                });
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Reads what the socket has and applies the frames in it: `Ok(false)` at its end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 2 {
            self.read.reserve(READ_SIZE);
        }
        let n = {
            let spare = self.read.spare_capacity_mut();
            let mut buf = ReadBuf::uninit(spare);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => buf.filled().len(),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                Poll::Pending => return Poll::Pending,
            }
        };
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        // SAFETY: `poll_read` initialized the first `n` bytes of the spare capacity.
        unsafe { self.read.set_len(self.read.len() + n) };
        if !self.preface_seen {
            let have = self.read.len().min(frame::PREFACE.len());
            if self.read[..have] != frame::PREFACE[..have] {
                let mut conn = lock(&self.shared);
                return Poll::Ready(Err(
                    conn.fail(Reason::PROTOCOL_ERROR, "not the HTTP/2 preface")
                ));
            }
            if have < frame::PREFACE.len() {
                return Poll::Ready(Ok(true));
            }
            let _ = self.read.split_to(frame::PREFACE.len());
            self.preface_seen = true;
        }
        let mut conn = lock(&self.shared);
        loop {
            match frame::read(&mut self.read, frame::DEFAULT_MAX_FRAME_SIZE) {
                Ok(Some(f)) => conn.recv(f)?,
                Ok(None) => break,
                Err(e) => conn.frame_error(e)?,
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Writes what the connection has queued: `Ok(true)` if anything went.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        let mut wrote = false;
        if self.write_closed {
            lock(&self.shared).out.clear();
            return Poll::Ready(Ok(false));
        }
        loop {
            if self.writing.is_empty() {
                let mut conn = lock(&self.shared);
                if conn.out.is_empty() {
                    break;
                }
                // Swap buffers: the connection keeps encoding into the emptied one.
                std::mem::swap(&mut self.writing, &mut conn.out);
                conn.unwritten = self.writing.len();
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.writing) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    // The peer is gone (a reset, most often: it closed with our last frames
                    // unread). What it sent before is still to be read, and may be a GOAWAY
                    // saying which streams it never processed: reading goes on to its end.
                    self.write_closed = true;
                    self.writing.clear();
                    let mut conn = lock(&self.shared);
                    conn.out.clear();
                    conn.peer_lost();
                    return Poll::Ready(Ok(wrote));
                }
                Poll::Ready(Ok(n)) => {
                    let _ = self.writing.split_to(n);
                    if self.writing.is_empty() {
                        self.writing.clear();
                    }
                    wrote = true;
                }
                Poll::Pending => {
                    return match wrote {
                        true => Poll::Ready(Ok(true)),
                        false => Poll::Pending,
                    };
                }
            }
        }
        if wrote {
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
        Poll::Ready(Ok(wrote))
    }

    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) {
        let Some((every, sleep, waiting)) = &mut self.ping else {
            return;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return;
        }
        let mut conn = lock(&self.shared);
        if *waiting && !conn.pong {
            conn.fail(Reason::NO_ERROR, "peer stopped answering pings");
            return;
        }
        conn.pong = false;
        frame::write_ping(&mut conn.out, false, *b"pillion!");
        *waiting = true;
        let deadline = tokio::time::Instant::now() + *every;
        sleep.as_mut().reset(deadline);
        // Registered with the timer again.
        let _ = sleep.as_mut().poll(cx);
    }
}

impl<I> Drop for Driver<I> {
    fn drop(&mut self) {
        // Handlers still waiting on this connection learn that it is gone.
        lock(&self.shared).close(ConnError::Closed);
    }
}
