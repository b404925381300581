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

/// The longest busy poll a proxy takes (`PILLION_BUSY_POLL`): a round trip within a node is
/// tens of microseconds; spinning longer only burns CPU between requests.
pub const BUSY_POLL_MAX: Duration = Duration::from_millis(10);

/// A busy-poll time: `None` for `0` (off).
pub fn parse_busy_poll(text: &str) -> Result<Option<Duration>, String> {
    match parse(text)? {
        d if d.is_zero() => Ok(None),
        d if d > BUSY_POLL_MAX => Err(format!(
            "`{text}` is longer than {}: a spin covers a round trip within a node (50us)",
            humantime::format_duration(BUSY_POLL_MAX)
        )),
        d => Ok(Some(d)),
    }
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

    #[test]
    fn busy_poll_is_off_or_short() {
        assert_eq!(parse_busy_poll("0"), Ok(None));
        assert_eq!(parse_busy_poll("50us"), Ok(Some(Duration::from_micros(50))));
        assert_eq!(parse_busy_poll("10ms"), Ok(Some(BUSY_POLL_MAX)));
        let err = parse_busy_poll("1s").unwrap_err();
        assert!(err.contains("longer than 10ms"), "{err}");
        assert!(parse_busy_poll("fast").is_err());
    }
}
