//! One module per subcommand that is more than wiring.

pub mod canary;
pub mod check;
pub mod diff;
pub mod http_json;
pub mod inject;
pub mod stat;

/// Rows as aligned columns two spaces apart (the first row is the header); columns from
/// `right_from` on are right-aligned (numbers).
pub fn columns<R: AsRef<[String]>>(rows: &[R], right_from: usize) -> String {
    let width = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..width)
        .map(|i| {
            rows.iter()
                .map(|r| r.as_ref().get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .as_ref()
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i >= right_from {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `--output`: how a subcommand prints data.
#[derive(Debug, clap::Args)]
pub struct OutputArg {
    /// `table` for people, `json` for scripts.
    #[arg(
        long,
        short = 'o',
        env = "PILLION_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: Output,
}

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
