//! Pillion's own HTTP/2 (RFC 9113, with HPACK, RFC 7541), built for a proxy's request path:
//! the proxy serves its clients with `server` and reaches endpoints with `client`.
//!
//! Why not the `h2` crate (which hyper and tonic use, and which the proxy used until
//! December 2026; `PILLION_HTTP2=h2` still selects it): per request, its machinery was most of
//! what a proxy hop cost (one h2c hop: 45,900 instructions, HTTP/2 on both sides ~35,000 of
//! them; docs/benchmarks.md). Here one connection's state sits behind one lock held briefly,
//! what a stream sends is HPACK-encoded straight into the write buffer, and nothing is queued
//! as frame values in between: the same hop is 23,200.
//!
//! - `frame`: frames read off a buffer with the checks each needs on its own, and written.
//! - `hpack`: header compression.
//! - `conn` (private): a connection's state, for either role: streams, flow control, settings,
//!   the checks of RFC 9113 §5 and §8, what to do with a peer that breaks them.
//! - `io` (private): the task that reads and writes the socket.
//! - `server`, `client`, and `stream` (bodies and the handles that hold a stream open).

pub mod client;
mod conn;
pub mod frame;
pub mod hpack;
mod io;
mod queue;
pub mod server;
mod stream;

pub use conn::{Config, ConnError, StreamError};
