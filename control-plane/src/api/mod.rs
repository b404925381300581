//! The gRPC services the proxies call: Discovery, InboundPolicy, Identity and Report.

pub mod discovery;
pub mod identity;
pub mod policy;
pub mod report;
pub mod watch;
