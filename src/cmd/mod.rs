//! One module per subcommand that is more than wiring.

pub mod canary;
pub mod check;
pub mod diff;
pub mod http_json;
pub mod inject;

/// How a subcommand prints data: `table` for people, `json` for scripts.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}
