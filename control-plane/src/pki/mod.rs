//! The certificate authority and the control plane's own serving certificate.

pub mod ca;
pub mod serving;
