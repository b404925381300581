//! Log set-up shared by every binary: `PILLION_LOG` is the filter (`info` when unset),
//! `PILLION_LOG_FORMAT` is `text` (the default) or `json`. A value that is set but wrong stops
//! the process with the variable named, rather than being ignored. Colours only on a terminal,
//! and never when `NO_COLOR` is set (<https://no-color.org>).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The log settings, checked.
pub struct LogSettings {
    filter: EnvFilter,
    json: bool,
    ansi: bool,
}

/// Reads the settings through `get` (the process environment, or a map in tests);
/// `default_filter` applies when `PILLION_LOG` is unset.
pub fn settings(
    get: &dyn Fn(&str) -> Option<String>,
    default_filter: &str,
) -> Result<LogSettings, String> {
    let filter = match get("PILLION_LOG") {
        None => EnvFilter::new(default_filter),
        Some(v) => EnvFilter::builder()
            .parse(&v)
            .map_err(|e| format!("PILLION_LOG={v:?}: not a log filter such as `info` or `pillion_proxy=debug,info` ({e})"))?,
    };
    let json = match get("PILLION_LOG_FORMAT").as_deref() {
        None | Some("text") | Some("plain") => false,
        Some("json") => true,
        Some(other) => {
            return Err(format!(
                "PILLION_LOG_FORMAT={other:?}: expected `text` or `json`"
            ));
        }
    };
    let no_color = get("NO_COLOR").is_some_and(|v| !v.is_empty());
    Ok(LogSettings {
        filter,
        json,
        ansi: !no_color && std::io::stderr().is_terminal(),
    })
}

impl LogSettings {
    /// Installs the subscriber (writing to stderr); a second install keeps the first.
    pub fn install(self) {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(self.filter)
            .with_writer(std::io::stderr)
            .with_ansi(self.ansi);
        let _ = if self.json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
    }
}

/// Checks the settings from the process environment and installs them; `Err` names the bad
/// variable (the caller stops the process with it).
pub fn init_from_env(default_filter: &str) -> Result<(), String> {
    settings(&|name| std::env::var(name).ok(), default_filter)?.install();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<LogSettings, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings(
            &move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            },
            "info",
        )
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = with(&[("PILLION_LOG", "pillion=notalevel")]).err().unwrap();
        assert!(err.starts_with("PILLION_LOG="), "{err}");
        let err = with(&[("PILLION_LOG_FORMAT", "yaml")]).err().unwrap();
        assert!(err.starts_with("PILLION_LOG_FORMAT="), "{err}");
        assert!(with(&[("PILLION_LOG", "debug"), ("PILLION_LOG_FORMAT", "json")]).is_ok());
    }

    #[test]
    fn no_color_turns_colours_off() {
        assert!(!with(&[("NO_COLOR", "1")]).unwrap().ansi);
    }
}
