//! How every Pillion program reads YAML: serde-saphyr with its guards against YAML bombs
//! (alias expansion, nesting depth, scalar sizes) kept, and its size caps raised to what real
//! mesh configuration reaches. The defaults (1,024 documents, 250,000 nodes per input) refused
//! a plain file of 1,000 Services with their EndpointSlices, and a `kubectl get -o yaml` List of
//! a large namespace.

/// Options for reading configuration files and manifests.
pub fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1_000_000;
    budget.max_nodes = 50_000_000;
    budget.max_events = 200_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_files_read_and_bombs_do_not() {
        let many: String = (0..2_000)
            .map(|i| format!("---\nkind: Service\nmetadata: {{name: svc-{i}}}\n"))
            .collect();
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple_with_options(&many, super::options()).unwrap();
        assert_eq!(docs.len(), 2_000);
        // A billion laughs still stops early.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(
            serde_saphyr::from_str_with_options::<serde_json::Value>(&bomb, super::options())
                .is_err()
        );
    }
}
