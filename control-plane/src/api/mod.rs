//! The gRPC services the proxies call: Discovery, InboundPolicy and Identity.

pub mod discovery;
pub mod identity;
pub mod policy;
pub mod watch;
