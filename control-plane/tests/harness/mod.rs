//! What the configuration fuzz target (`fuzz/fuzz_targets/config.rs`) runs, shared with
//! `tests/fuzz_inputs.rs`, which replays the inputs it kept on each test run.
//!
//! The input is a configuration file's text, read as the control plane reads its directory:
//! every error is formatted as the log and `pillion check` print it, the objects in force
//! build a model, its warnings are listed, and every Service's destination is resolved from
//! two namespaces along with two identities' inbound policies. A panic anywhere is a
//! failure.

#![allow(dead_code)]

use std::path::PathBuf;

use pillion_control_plane::model::Model;
use pillion_control_plane::source::files::Store;
use pillion_control_plane::source::lines;

/// One file per process, rewritten for each input.
fn file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pillion-fuzz-config-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("config.yaml")
}

pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = file();
    std::fs::write(&path, text).expect("the input written");
    let store = Store::read_paths(std::slice::from_ref(&path)).expect("the input read");
    for error in store.errors() {
        let _ = error.to_string();
    }
    let model = Model::new(store.objects(), 1);
    for warning in model.warnings() {
        let _ = format!("{warning:?}");
    }
    for authority in model.service_authorities() {
        for namespace in ["default", "other"] {
            let _ = model.resolve(&authority, namespace);
        }
    }
    for identity in [
        "web.default.serviceaccount.identity.pillion.cluster.local",
        "spiffe://cluster.local/ns/default/sa/web",
    ] {
        let _ = model.inbound_policy(identity);
    }
    for doc in lines::documents(text) {
        let _ = doc.line_of("spec.rules[0].backendRefs[1].weight");
        let _ = doc.scalar("metadata.name");
    }
}
