//! Where configuration comes from: a directory of YAML files, or the Kubernetes API.

pub mod files;
pub mod kubernetes;
pub mod lines;
