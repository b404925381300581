//! Reading samples back from the Prometheus text format 0.0.4: the proxy summarizes its own
//! `/metrics` for the control plane's reports, and the CLI reads the proxies' figures.
//!
//! Only what the format's sample lines hold: `name{label="value",...} value [timestamp]`.
//! Comments (`# HELP`, `# TYPE`) and lines that do not parse are skipped.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of a label, or `""` when the sample does not have it.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Every sample of the text, in order.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The samples of one metric name.
pub fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = Sample> + 'a {
    text.lines()
        .filter(move |l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(parse_line)
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y\"z"} rest` → the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        let text = "# HELP x A counter.\n# TYPE x counter\nx_total 3\n\
                    pillion_responses_total{direction=\"outbound\",backend=\"a\\\"b\",status_code=\"200\"} 12 1700000000\n\
                    pillion_lat_bucket{le=\"+Inf\"} 7\nbroken{le=\"1\" 3\n";
        let all = parse(text);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0].name, "x_total");
        assert_eq!(all[0].value, 3.0);
        assert_eq!(all[1].label("direction"), "outbound");
        assert_eq!(all[1].label("backend"), "a\"b");
        assert_eq!(all[1].label("missing"), "");
        assert_eq!(all[1].value, 12.0);
        assert_eq!(all[2].label("le"), "+Inf");
        let only: Vec<Sample> = samples(text, "pillion_responses_total").collect();
        assert_eq!(only.len(), 1);
        assert_eq!(
            samples(text, "x").count(),
            0,
            "a prefix of a name is not the name"
        );
    }

    #[test]
    fn hostile_lines_are_skipped_not_panicked_on() {
        for line in [
            "{",
            "a{",
            "a{b",
            "a{b=",
            "a{b=\"",
            "a{b=\"\\",
            "a{b=\"c\"",
            "a{b=\"c\"}",
            "a x",
            "a{}}",
            "é{é=\"é\"} 1",
            "a{b=\"c\"} NaN",
        ] {
            let _ = parse(line);
        }
        assert_eq!(parse("é{é=\"é\"} 1")[0].label("é"), "é");
    }
}
