//! HTTP mechanisms: serving HTTP/2 from clients, forwarding one request to one endpoint,
//! pooled connections, bodies, and the errors the proxy answers. No control-plane types.

pub mod app_protocol;
pub mod batch;
pub mod body;
pub mod errors;
pub mod forward;
pub mod h2_server;
pub mod mirror;
pub mod pool;
pub mod replay;

/// A request on its way through the proxy's layers (route, split, retries, forward, pool), boxed.
/// An `async` block keeps everything it captures for its whole life, so each layer that took
/// the request by value kept its own 240 bytes in the request's future, whatever the layer
/// below it held: ~1.4 KB of every request in flight. A box is 8 bytes at each layer.
pub type BoxRequest = Box<http::Request<body::Body>>;
