//! The check that keeps `docs/metrics.md` and a binary's `/metrics` in step (used by the
//! proxy's and the control plane's tests): every family printed is listed as `` `name` ``, and
//! every family listed in the table (`| `pillion_…` |` rows) is printed.

/// `encoded`: the Prometheus text of a registry with a sample in every family; `docs`: the part
/// of docs/metrics.md that documents that binary. Returns every disagreement.
pub fn disagreements(encoded: &str, docs: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut families = Vec::new();
    for line in encoded.lines() {
        let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        else {
            continue;
        };
        // The text encoder names a counter's samples `_total`, and so do the docs.
        let name = if kind == "counter" && !name.ends_with("_total") {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        if !docs.contains(&format!("`{name}`")) {
            problems.push(format!("{name} is missing from docs/metrics.md"));
        }
        families.push(name);
    }
    for line in docs.lines().filter(|l| l.starts_with("| `pillion_")) {
        if let Some(name) = line.split('`').nth(1)
            && !families.iter().any(|f| f == name)
        {
            problems.push(format!(
                "docs/metrics.md lists {name}, which the binary does not have"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_are_checked() {
        let encoded = "# TYPE pillion_a counter\npillion_a_total 1\n# TYPE pillion_b gauge\n";
        let docs = "| `pillion_a_total` | counter |\n| `pillion_c` | gauge |\n";
        let problems = disagreements(encoded, docs);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("pillion_b is missing"));
        assert!(problems[1].contains("lists pillion_c"));
    }
}
