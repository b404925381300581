//! A destination's routing state as the request path reads it, compiled from discovery.

pub mod fault;
pub mod filters;
pub mod retry;
pub mod snapshot;
pub mod split;
