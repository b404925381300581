//! Pillion's own HTTP/2 (RFC 9113), built for a proxy's request path.
//!
//! Being built in steps (docs/benchmarks.md says why: the `h2` crate's machinery is most of
//! what a request costs the proxy now): HPACK (RFC 7541), frames, and the server side of a
//! connection. Not on the proxy's request path yet.

pub mod client;
mod conn;
pub mod frame;
pub mod hpack;
mod io;
pub mod server;
mod stream;

pub use conn::{Config, ConnError, StreamError};
