//! Adapters to the control plane (destination watches, inbound policy) and to DNS, for
//! destinations outside the mesh configuration.

pub mod discovery;
pub mod dns;
pub mod policy;
pub mod report;
