//! Pillion on Kubernetes: the sidecar-injecting admission webhook (`pillion-injector`), the
//! iptables rules of the pod's init container (`pillion-init`), and `pillion inject` for YAML
//! kept in git. The patch and the rules are plain functions; the binaries only wire them up.

pub mod admission;
pub mod config;
pub mod iptables;
pub mod namespaces;
pub mod overrides;
pub mod patch;
pub mod tls;
pub mod webhook;
pub mod workloads;
