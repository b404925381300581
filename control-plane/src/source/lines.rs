//! Where each field of each YAML document starts, so that a refused object is reported as
//! `file:line` (the control plane's log, `pillion check`) and not only by its field path.
//!
//! One walk over the parser's events (with their source positions), kept apart from the
//! deserialization that decides what the document means: a path here is the same
//! `spec.backends[1].weight` that a refusal names.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// One document of a file: its first line, and the line of every field in it.
#[derive(Debug, Default)]
pub struct Document {
    /// 1-based line where the document starts.
    pub line: usize,
    fields: HashMap<String, usize>,
    scalars: HashMap<String, String>,
}

impl Document {
    /// The line of `field` (`spec.backends[1].weight`), or of its nearest enclosing field that
    /// is in the document (a missing field is reported where its parent is), or the
    /// document's first line.
    pub fn line_of(&self, field: &str) -> usize {
        let mut path = field;
        loop {
            if let Some(line) = self.fields.get(path) {
                return *line;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.line,
            }
        }
    }

    /// The text of a scalar field (`kind`, `metadata.name`), as written.
    pub fn scalar(&self, field: &str) -> Option<&str> {
        self.scalars.get(field).map(String::as_str)
    }
}

/// Where a container's children are reported under.
enum Frame {
    /// A mapping at `path`; `key` is the key whose value comes next (None: a key comes next).
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

/// The documents of `text`, in order (the same numbering as the documents the deserializer
/// reads). Text past a syntax error is not located (the error itself says where it is).
pub fn documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut doc: Option<Document> = None;
    let mut stack: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        let line = span.start.line();
        match event {
            Event::DocumentStart(..) => {
                stack.clear();
                doc = Some(Document {
                    line,
                    ..Document::default()
                });
            }
            Event::DocumentEnd => docs.extend(doc.take()),
            Event::Scalar(value, ..) => {
                if let Some(d) = doc.as_mut()
                    && let Some(path) = node(&mut stack, d, line, Some(&value))
                {
                    d.scalars.insert(path, value.into_owned());
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = match doc.as_mut() {
                    Some(d) => node(&mut stack, d, line, None),
                    None => None,
                };
                // A mapping used as a key has no path of its own: its fields are not located.
                let path = path.unwrap_or_else(|| "?".to_string());
                stack.push(match event {
                    Event::MappingStart(..) => Frame::Map { path, key: None },
                    _ => Frame::Seq { path, next: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            Event::Alias(..) => {
                if let Some(d) = doc.as_mut() {
                    node(&mut stack, d, line, None);
                }
            }
            _ => {}
        }
    }
    docs.extend(doc);
    docs
}

/// Places one node: a mapping key is recorded (its line is the field's line) and gives no
/// path; a value gets its path (an item of a sequence is recorded at its own line).
fn node(
    stack: &mut [Frame],
    doc: &mut Document,
    line: usize,
    scalar: Option<&str>,
) -> Option<String> {
    let join = |path: &str, key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match stack.last_mut() {
        None => Some(String::new()),
        Some(Frame::Map { path, key }) => match key.take() {
            Some(k) => Some(join(path, &k)),
            None => {
                let k = scalar.unwrap_or("?").to_string();
                doc.fields.entry(join(path, &k)).or_insert(line);
                *key = Some(k);
                None
            }
        },
        Some(Frame::Seq { path, next }) => {
            let here = format!("{path}[{next}]");
            *next += 1;
            doc.fields.entry(here.clone()).or_insert(line);
            Some(here)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# leading comment
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: web
spec:
  service: web
  backends:
  - service: v1
    weight: 90
  - {service: v2, weight: -10}
---
kind: HTTPRoute
metadata: {name: r, namespace: prod}
spec:
  rules:
  - matches:
    - path:
        value: /api
";

    #[test]
    fn fields_are_found_in_block_and_flow_style() {
        let docs = documents(TEXT);
        assert_eq!(docs.len(), 2);
        let split = &docs[0];
        assert_eq!(split.scalar("kind"), Some("TrafficSplit"));
        assert_eq!(split.scalar("metadata.name"), Some("web"));
        assert_eq!(split.line_of("spec.backends[0].weight"), 10);
        assert_eq!(split.line_of("spec.backends[1].weight"), 11);
        assert_eq!(split.line_of("spec.backends[1]"), 11);
        // A missing field is reported where its parent is.
        assert_eq!(split.line_of("spec.backends[0].port"), 9);
        assert_eq!(split.line_of("spec.nothing.here"), 6);
        assert_eq!(split.line_of("nothing"), split.line);
        let route = &docs[1];
        assert_eq!(route.line, 12);
        assert_eq!(route.scalar("metadata.namespace"), Some("prod"));
        assert_eq!(route.line_of("spec.rules[0].matches[0].path.value"), 19);
    }

    #[test]
    fn text_after_a_syntax_error_is_not_located() {
        let docs = documents("kind: A\nmetadata: {name: a}\n---\nkind: [\n");
        assert_eq!(docs.first().and_then(|d| d.scalar("kind")), Some("A"));
    }
}
