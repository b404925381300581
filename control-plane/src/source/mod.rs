//! Where configuration comes from. Today a directory of YAML files; Kubernetes later.

pub mod files;
