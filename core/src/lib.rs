//! What the proxy, the control plane and the CLI share and neither may own: one duration
//! grammar for every flag and variable, and one way to set up logs.

pub mod duration;
pub mod logging;
