//! One module per subcommand that is more than wiring.

pub mod canary;
pub mod check;
pub mod diff;
pub mod http_json;
pub mod inject;
pub mod stat;

/// How a subcommand prints data: `table` for people, `json` for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Writes to stdout; a reader that went away (`pillion stat | head`) ends the program quietly,
/// as it ends `ls` or `grep`, instead of a panic from `println!`.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pillion: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`write_out`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cmd::write_out(format_args!($($arg)*)) };
}

/// `println!` through [`write_out`].
#[macro_export]
macro_rules! outln {
    () => { $crate::cmd::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cmd::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}
