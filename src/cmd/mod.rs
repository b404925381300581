//! One module per subcommand that is more than wiring.

pub mod canary;
pub mod inject;
