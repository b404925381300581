//! Adapters to the control plane: destination watches and inbound policy.

pub mod discovery;
pub mod policy;
