//! What the proxy reports: Prometheus metrics.

pub mod metrics;
