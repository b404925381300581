//! `pillion inject`: the sidecar added to workloads in YAML files, as the webhook would add it,
//! for GitOps repositories that keep the injected form.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use pillion_injector::config::SidecarArgs;
use pillion_injector::workloads::inject_yaml;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pillion inject -f deploy.yaml > deploy.injected.yaml\n  kubectl get deploy -o yaml | pillion inject | kubectl apply -f -\n  pillion inject -f a.yaml -f b.yaml --trust-anchors-file ca.pem\n\nEach workload's outcome (injected, or skipped and why) goes to stderr; the YAML to stdout.\nExit status: 0 done, 1 a file or annotation was refused (nothing is written), 2 usage."
)]
pub struct InjectArgs {
    /// YAML file to read (`-`: standard input, the default). Repeat for several.
    #[arg(
        short = 'f',
        long = "filename",
        env = "PILLION_INJECT_FILES",
        value_delimiter = ','
    )]
    files: Vec<PathBuf>,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

pub fn run(args: InjectArgs) -> i32 {
    let sidecar = match args.sidecar.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pillion inject: {e}");
            return 2;
        }
    };
    let files = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files
    };
    let mut output = String::new();
    let mut failed = false;
    for file in &files {
        let (name, text) = match read(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("pillion inject: {e}");
                failed = true;
                continue;
            }
        };
        match inject_yaml(&text, &name, &sidecar) {
            Ok((yaml, reports)) => {
                for r in reports {
                    match &r.skipped {
                        None => eprintln!("{}: injected", r.what),
                        Some(skip) => eprintln!("{}: skipped: {skip}", r.what),
                    }
                    for w in &r.warnings {
                        eprintln!("{}: warning: {w}", r.what);
                    }
                }
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                if !output.is_empty() && !yaml.starts_with("---") {
                    output.push_str("---\n");
                }
                output.push_str(&yaml);
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("pillion inject: nothing written; fix the errors above");
        return 1;
    }
    if let Err(e) = std::io::stdout().write_all(output.as_bytes()) {
        eprintln!("pillion inject: writing the output: {e}");
        return 1;
    }
    0
}

fn read(file: &PathBuf) -> Result<(String, String), String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("standard input: {e}"))?;
        return Ok(("<stdin>".into(), text));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((file.display().to_string(), text))
}
