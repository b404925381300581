//! Pillion's own HTTP/2 (RFC 9113), built for a proxy's request path.
//!
//! Being built in steps (docs/benchmarks.md says why: the `h2` crate's machinery is most of
//! what a request costs the proxy now). So far: HPACK, the header compression (RFC 7541).
//! Nothing here is on the request path yet.

pub mod frame;
pub mod hpack;
