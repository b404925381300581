//! The one duration grammar of every `PILLION_*` variable and flag: humantime's (`500ms`,
//! `10s`, `1m30s`, `2h`, `1h 30m`), and a bare number means seconds.

use std::time::Duration;

/// Parses a duration, or says why not.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("`{text}`: {e}"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{text}` is not a duration such as 500ms, 10s or 1m30s ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_for_every_setting() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse("soon").is_err());
        assert!(parse("").is_err());
        assert!(parse("-1s").is_err());
    }
}
