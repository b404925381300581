//! The `pillion` command: the demo, and the demo's backend application (which the end-to-end
//! tests use as their server application too).

pub mod cmd;
pub mod demo;
pub mod demo_app;
