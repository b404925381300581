//! One module per subcommand that is more than wiring.

pub mod canary;
pub mod diff;
pub mod http_json;
pub mod inject;
