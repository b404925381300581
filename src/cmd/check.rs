//! `pillion check`: mesh configuration validated exactly as the control plane reads it, each
//! problem printed as `file:line: Kind/name: field: reason` (the shape editors and CI
//! annotations understand), with warnings for what is valid but almost surely a mistake.

use std::path::{Path, PathBuf};

use pillion_control_plane::config::ObjectId;
use pillion_control_plane::model::Model;
use pillion_control_plane::source::files::Store;
use pillion_control_plane::source::lines;
use serde::Serialize;

use super::{Output, OutputArg};

const PROBLEMS: i32 = 1;
const USAGE: i32 = 2;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pillion check                      # the YAML files of this directory\n  pillion check mesh/ extra/split.yaml\n  pillion check --strict -o json mesh/ # warnings fail too; JSON for scripts\n\nA directory is read as the control plane reads one: its *.yaml and *.yml files, not hidden ones,\nnot subdirectories. A file named on the command line is read whatever its name.\n\nExit status: 0 no problems (warnings are printed), 1 problems (or warnings with --strict),\n2 usage: a path that cannot be read."
)]
pub struct CheckArgs {
    /// Files and directories of mesh configuration (default: the current directory).
    #[arg(env = "PILLION_CHECK_PATHS", value_delimiter = ',')]
    paths: Vec<PathBuf>,
    /// Count warnings as problems (exit status 1).
    #[arg(long, env = "PILLION_CHECK_STRICT")]
    strict: bool,
    #[command(flatten)]
    output: OutputArg,
}

/// One finding, located.
#[derive(Debug, Serialize)]
struct Finding {
    /// `error`: the control plane refuses it (and keeps the last good version); `warning`:
    /// accepted, but almost surely a mistake.
    severity: &'static str,
    file: PathBuf,
    /// 1-based; 0 when the place is not known.
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<ObjectId>,
    field: String,
    reason: String,
}

impl Finding {
    /// `file:line: [warning: ]Kind/name: field: reason`.
    fn line(&self) -> String {
        let mut out = self.file.display().to_string();
        if self.line > 0 {
            out.push_str(&format!(":{}", self.line));
        }
        out.push_str(": ");
        if self.severity == "warning" {
            out.push_str("warning: ");
        }
        if let Some(object) = &self.object {
            out.push_str(&format!("{}: ", object.short()));
        }
        if !self.field.is_empty() {
            out.push_str(&format!("{}: ", self.field));
        }
        out.push_str(&self.reason);
        out
    }
}

pub fn run(args: CheckArgs) -> i32 {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths
    };
    let store = match Store::read_paths(&paths) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("pillion check: cannot read {e}");
            return USAGE;
        }
    };
    let files = store.files().count();
    if files == 0 {
        eprintln!(
            "pillion check: no configuration files (*.yaml, *.yml) in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return USAGE;
    }
    let findings = findings(&store);
    let errors = findings.iter().filter(|f| f.severity == "error").count();
    let warnings = findings.len() - errors;
    let objects = store.objects().len();
    match args.output.output {
        Output::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "files": files,
                "objects": objects,
                "errors": errors,
                "warnings": warnings,
                "findings": findings,
            }))
            .unwrap_or_default()
        ),
        Output::Table => {
            for f in &findings {
                crate::outln!("{}", f.line());
            }
            // The summary goes to stderr: stdout stays one finding per line.
            eprintln!(
                "{files} file{}, {objects} object{}: {errors} error{}, {warnings} warning{}",
                plural(files),
                plural(objects),
                plural(errors),
                plural(warnings)
            );
        }
    }
    if errors > 0 || (args.strict && warnings > 0) {
        PROBLEMS
    } else {
        0
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Refusals first (in file order), then duplicates and warnings, each at its line.
fn findings(store: &Store) -> Vec<Finding> {
    let mut out: Vec<Finding> = store
        .errors()
        .into_iter()
        .map(|e| Finding {
            severity: "error",
            file: e.file,
            line: e.line,
            object: e.object,
            field: e.field,
            reason: e.reason,
        })
        .collect();
    let mut located = Located::default();
    for (id, ignored, winner) in store.duplicates() {
        out.push(Finding {
            severity: "warning",
            line: located.line(ignored, &id, ""),
            file: ignored.to_path_buf(),
            reason: format!(
                "also defined in {}, which is read first (files are read in name order): this \
                 definition is ignored",
                winner.display()
            ),
            object: Some(id),
            field: String::new(),
        });
    }
    let model = Model::new(store.objects(), 0);
    for w in model.warnings() {
        let file = store.file_of(&w.object).map(Path::to_path_buf);
        let line = file
            .as_deref()
            .map_or(0, |f| located.line(f, &w.object, &w.field));
        out.push(Finding {
            severity: "warning",
            file: file.unwrap_or_default(),
            line,
            object: Some(w.object),
            field: w.field,
            reason: w.reason,
        });
    }
    let first_warning = out.iter().position(|f| f.severity == "warning");
    if let Some(start) = first_warning {
        out[start..].sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    }
    out
}

/// Files' field lines, each file read once.
#[derive(Default)]
struct Located {
    files: std::collections::HashMap<PathBuf, Vec<lines::Document>>,
}

impl Located {
    /// The line of `field` in the document of `file` that defines `id` (0 if not found).
    fn line(&mut self, file: &Path, id: &ObjectId, field: &str) -> usize {
        let docs = self.files.entry(file.to_path_buf()).or_insert_with(|| {
            std::fs::read_to_string(file)
                .map(|text| lines::documents(&text))
                .unwrap_or_default()
        });
        docs.iter()
            .find(|d| {
                d.scalar("kind") == Some(id.kind.as_str())
                    && d.scalar("metadata.name") == Some(id.name.as_str())
                    && d.scalar("metadata.namespace").unwrap_or("default") == id.namespace
            })
            .map_or(0, |d| d.line_of(field))
    }
}
