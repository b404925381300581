//! What the proxy reports: Prometheus metrics and Zipkin spans.

pub mod metrics;
pub mod trace;
