//! HTTP mechanisms: serving HTTP/2 from clients, forwarding one request to one endpoint,
//! pooled connections, bodies, and the errors the proxy answers. No control-plane types.

pub mod app_protocol;
pub mod batch;
pub mod body;
pub mod errors;
pub mod forward;
pub mod h2_server;
pub mod pool;
pub mod replay;
