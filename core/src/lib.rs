//! What the proxy, the control plane and the CLI share and neither may own: one duration
//! grammar for every flag and variable, one way to set up logs, and the process metrics.

pub mod duration;
pub mod exposition;
pub mod golden;
pub mod logging;
pub mod memory;
pub mod metrics_doc;
pub mod process;
pub mod yaml;
