//! The configuration directory: which objects each file holds, with the last good version of
//! every object kept in force when a new version of it is refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use crate::config::{self, ObjectId, Parsed, Resource};

/// A refused document, named by file, line, object, field and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the field (or of the document) refused; 0 when not known.
    pub line: usize,
    /// 1-based position of the document in its file; 0 for the whole file.
    pub document: usize,
    pub object: Option<ObjectId>,
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    /// An error about a whole file (unreadable, not YAML, emptied).
    fn file(path: &Path, line: usize, reason: String) -> Self {
        ConfigError {
            file: path.to_path_buf(),
            line,
            document: 0,
            object: None,
            field: String::new(),
            reason,
        }
    }
}

/// `file:line: Kind/name: field: reason`, the shape compilers use, so that editors and CI
/// annotations can jump to it. An object outside `default` says its namespace.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        } else if self.document > 0 {
            write!(f, " document {}", self.document)?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {}", object.short())?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What a file looked like when last read: a changed stamp means read it again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug, Default)]
struct FileState {
    stamp: Option<Stamp>,
    /// A new stamp seen at the last scan and not read yet: a file is read once its stamp has
    /// held still for one scan, so a file caught between truncate and write is not read.
    settling: Option<Stamp>,
    objects: Vec<(ObjectId, Resource)>,
    errors: Vec<ConfigError>,
}

/// Every object of every file in the directory, as last read successfully.
#[derive(Debug, Default)]
pub struct Store {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The first scan reads everything at once (nothing is being written at start, and the
    /// first proxies must get the whole configuration).
    scanned: bool,
}

/// The result of a scan that found changes.
pub struct Change {
    /// Files read again, removed or added.
    pub files: Vec<PathBuf>,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            scanned: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every file whose stamp changed since the last scan. Returns `None` when nothing
    /// changed, so that an idle directory costs one `stat` per file and nothing downstream.
    pub fn scan(&mut self) -> std::io::Result<Option<Change>> {
        let present = config_files(&self.dir)?;
        let mut changed = Vec::new();
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains_key(*p))
            .cloned()
            .collect();
        for path in removed {
            tracing::info!(file = %path.display(), "configuration file removed");
            self.files.remove(&path);
            changed.push(path);
        }
        let settle = std::mem::replace(&mut self.scanned, true);
        for (path, stamp) in present {
            let state = self.files.entry(path.clone()).or_default();
            if state.stamp.as_ref() == Some(&stamp) {
                state.settling = None;
                continue;
            }
            if settle && state.settling.as_ref() != Some(&stamp) {
                state.settling = Some(stamp);
                continue;
            }
            state.settling = None;
            reload(&path, stamp, state);
            changed.push(path);
        }
        Ok((!changed.is_empty()).then_some(Change { files: changed }))
    }

    /// Files and directories read once, as the control plane would read them (`pillion
    /// check`): a directory's YAML files (not hidden, not in subdirectories), and each file
    /// named whatever its name.
    pub fn read_paths(paths: &[PathBuf]) -> std::io::Result<Store> {
        let mut store = Store::default();
        for path in paths {
            let meta = std::fs::metadata(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            let files = if meta.is_dir() {
                config_files(path)?
            } else {
                BTreeMap::from([(path.clone(), Stamp::of(&meta))])
            };
            for (file, stamp) in files {
                let state = store.files.entry(file.clone()).or_default();
                if state.stamp.is_none() {
                    reload(&file, stamp, state);
                }
            }
        }
        store.scanned = true;
        Ok(store)
    }

    /// Every file read, in name order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }

    /// The file an object in force was read from.
    pub fn file_of(&self, id: &ObjectId) -> Option<&Path> {
        self.files
            .iter()
            .find(|(_, state)| state.objects.iter().any(|(have, _)| have == id))
            .map(|(path, _)| path.as_path())
    }

    /// Objects defined in more than one file: (the object, the file whose definition is
    /// ignored, the file whose definition is in force).
    pub fn duplicates(&self) -> Vec<(ObjectId, &Path, &Path)> {
        let mut first: HashMap<&ObjectId, &Path> = HashMap::new();
        let mut out = Vec::new();
        for (path, state) in &self.files {
            for (id, _) in &state.objects {
                match first.get(id) {
                    Some(winner) if *winner != path.as_path() => {
                        out.push((id.clone(), path.as_path(), *winner));
                    }
                    Some(_) => {}
                    None => {
                        first.insert(id, path);
                    }
                }
            }
        }
        out
    }

    /// All objects in force, files in name order; an object defined twice keeps the first.
    pub fn objects(&self) -> Vec<(ObjectId, Resource)> {
        let mut seen: HashMap<&ObjectId, &Path> = HashMap::new();
        let mut out = Vec::new();
        for (path, state) in &self.files {
            for (id, resource) in &state.objects {
                if let Some(first) = seen.get(id) {
                    tracing::warn!(
                        object = %id,
                        file = %path.display(),
                        first = %first.display(),
                        "object defined twice; the first file (by name) wins"
                    );
                    continue;
                }
                seen.insert(id, path);
                out.push((id.clone(), resource.clone()));
            }
        }
        out
    }

    /// The documents refused in the current files.
    pub fn errors(&self) -> Vec<ConfigError> {
        self.files
            .values()
            .flat_map(|s| s.errors.iter().cloned())
            .collect()
    }
}

/// The parser's message without its source snippet (the error is already placed at its line):
/// `line 4 column 5: did not find expected ',' or '}'`.
fn one_line(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// The YAML files of a directory, with their stamps.
fn config_files(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let mut present = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !is_config_file(&path) {
            continue;
        }
        // `metadata` follows symlinks, as a Kubernetes ConfigMap mount needs.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            present.insert(path, Stamp::of(&meta));
        }
    }
    Ok(present)
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }
}

fn is_config_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == "yaml" || e == "yml");
    yaml && !hidden
}

/// Reads a file again. A document that is refused keeps the previous version of its object (when
/// its identity can be read); a file that is not YAML at all keeps everything it had.
fn reload(path: &Path, stamp: Stamp, state: &mut FileState) {
    state.stamp = Some(stamp);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let error = ConfigError::file(path, 0, format!("cannot read: {e}"));
            tracing::error!(error = %error, "configuration refused; the previous version stays in force");
            state.errors = vec![error];
            return;
        }
    };
    let docs: Vec<Value> = match serde_saphyr::from_multiple_with_options(
        &text,
        pillion_core::yaml::options(),
    ) {
        Ok(docs) => docs,
        Err(e) => {
            let line = e.location().map_or(0, |l| l.line() as usize);
            let error = ConfigError::file(path, line, format!("not valid YAML: {}", one_line(&e)));
            tracing::error!(error = %error, "configuration refused; the previous version stays in force");
            state.errors = vec![error];
            return;
        }
    };
    // A stamp that moved while we read means a writer is still at it: read again later.
    let now = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
    if now.as_ref() != state.stamp.as_ref() {
        state.stamp = None;
        return;
    }
    if docs.iter().all(Value::is_null) && !state.objects.is_empty() {
        // An empty or comment-only file is what an editor leaves between truncate and write;
        // removing the file is how its objects are deleted.
        let error = ConfigError::file(
            path,
            0,
            "the file is empty or holds only comments; its objects stay in force until it is \
             removed or holds objects again"
                .into(),
        );
        tracing::warn!(error = %error, objects = state.objects.len(), "empty configuration file ignored");
        state.errors = vec![error];
        return;
    }
    let previous = std::mem::take(&mut state.objects);
    state.errors.clear();
    // Where each field is: worked out only when a document is refused.
    let mut located: Option<Vec<super::lines::Document>> = None;
    for (i, doc) in docs.into_iter().enumerate() {
        match config::parse_document(doc) {
            Ok(Parsed::Resource(id, resource)) => state.objects.push((id, *resource)),
            Ok(Parsed::Empty) => {}
            Ok(Parsed::Skipped { api_version, kind }) => {
                tracing::info!(file = %path.display(), document = i + 1, %api_version, %kind, "kind not used by Pillion; skipped");
            }
            Err(rejected) => {
                let docs = located.get_or_insert_with(|| super::lines::documents(&text));
                let line = docs.get(i).map_or(0, |d| d.line_of(&rejected.error.field));
                let error = ConfigError {
                    file: path.to_path_buf(),
                    line,
                    document: i + 1,
                    object: rejected.id.clone(),
                    field: rejected.error.field,
                    reason: rejected.error.reason,
                };
                let kept = rejected
                    .id
                    .and_then(|id| previous.iter().find(|(p, _)| *p == id).cloned());
                match kept {
                    Some(old) => {
                        tracing::error!(error = %error, "configuration refused; the previous version of this object stays in force");
                        state.objects.push(old);
                    }
                    None => {
                        tracing::error!(error = %error, "configuration refused");
                    }
                }
                state.errors.push(error);
            }
        }
    }
    // A file with a refused document is not a deliberate deletion of what it no longer
    // defines (it may be half-written, or hold a typo): those objects stay until it reads clean.
    if !state.errors.is_empty() {
        for (id, resource) in previous {
            if !state.objects.iter().any(|(have, _)| *have == id) {
                tracing::warn!(file = %path.display(), object = %id, "object missing from a file with errors; the previous version stays in force");
                state.objects.push((id, resource));
            }
        }
    }
    tracing::info!(file = %path.display(), objects = state.objects.len(), errors = state.errors.len(), "configuration file read");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPLIT: &str = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\n\
        metadata: {name: web}\nspec:\n  service: web\n  backends:\n  - {service: v1, weight: 90}\n  - {service: v2, weight: 10}\n";

    fn weights(store: &Store) -> Vec<i64> {
        store
            .objects()
            .into_iter()
            .filter_map(|(_, r)| match r {
                Resource::TrafficSplit(s) => {
                    Some(s.spec.backends.iter().map(|b| b.weight).collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Writes a file so that its stamp surely changes (same-length rewrites within one mtime tick
    /// would otherwise look unchanged to a scan).
    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        f.set_modified(later).unwrap();
    }

    /// Scans until a changed file has settled and been read.
    fn settle(store: &mut Store) {
        store.scan().unwrap();
        store.scan().unwrap();
    }

    #[test]
    fn a_file_of_thousands_of_documents_is_read() {
        // serde-saphyr's default budget refused more than 1,024 documents in one input.
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..3_000)
            .map(|i| format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{ports: [{{port: 80}}]}}\n"))
            .collect();
        write(&dir.path().join("many.yaml"), &text);
        let mut store = Store::new(dir.path());
        settle(&mut store);
        assert!(store.errors().is_empty(), "{:?}", store.errors());
        assert_eq!(store.objects().len(), 3_000);
    }

    #[test]
    fn a_file_is_read_once_it_holds_still() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("split.yaml");
        write(&file, SPLIT);
        let mut store = Store::new(dir.path());
        assert!(
            store.scan().unwrap().is_some(),
            "the first scan reads at once"
        );
        // Caught mid-write: the half that is there is not read ...
        std::fs::write(&file, &SPLIT[..SPLIT.len() - 30]).unwrap();
        assert!(store.scan().unwrap().is_none());
        // ... and the finished file is, once it has held still for a scan.
        write(&file, &SPLIT.replace("weight: 10", "weight: 30"));
        assert!(store.scan().unwrap().is_none());
        assert!(store.scan().unwrap().is_some());
        assert_eq!(weights(&store), vec![90, 30]);
    }

    #[test]
    fn empty_comment_only_and_mistyped_files_delete_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("split.yaml");
        write(&file, SPLIT);
        let mut store = Store::new(dir.path());
        store.scan().unwrap();
        for text in [
            "",
            "# nothing here yet\n",
            "---\n",
            &SPLIT.replace("v1alpha2", "v1alpha3"),
            &SPLIT.replace("kind: TrafficSplit", "kind: TraficSplit"),
            &SPLIT.replace("backends:", "backends:\n  - {service: v3}"),
        ] {
            write(&file, text);
            settle(&mut store);
            assert_eq!(weights(&store), vec![90, 10], "after {text:?}");
            let errors = store.errors();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].to_string().contains("split.yaml"),
                "{}",
                errors[0]
            );
        }
        // A clean file that no longer defines the split does delete it; so does removal.
        write(&file, &SPLIT.replace("name: web", "name: other"));
        settle(&mut store);
        assert_eq!(store.objects().len(), 1);
        std::fs::remove_file(&file).unwrap();
        settle(&mut store);
        assert!(store.objects().is_empty());
    }

    #[test]
    fn a_refused_document_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("split.yaml");
        write(&file, SPLIT);
        let mut store = Store::new(dir.path());
        assert!(store.scan().unwrap().is_some());
        assert_eq!(weights(&store), vec![90, 10]);
        assert!(store.scan().unwrap().is_none(), "nothing changed");

        write(&file, &SPLIT.replace("weight: 10", "weight: -10"));
        settle(&mut store);
        assert_eq!(weights(&store), vec![90, 10]);
        let errors = store.errors();
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(
            text.contains("split.yaml:8: TrafficSplit/web: spec.backends[1].weight: "),
            "{text}"
        );

        write(&file, "this: is: not: yaml: [");
        settle(&mut store);
        assert_eq!(weights(&store), vec![90, 10]);
        assert!(store.errors()[0].reason.contains("not valid YAML"));

        write(
            &file,
            &SPLIT
                .replace("weight: 10", "weight: 50")
                .replace("weight: 90", "weight: 50"),
        );
        settle(&mut store);
        assert_eq!(weights(&store), vec![50, 50]);
        assert!(store.errors().is_empty());

        std::fs::remove_file(&file).unwrap();
        settle(&mut store);
        assert!(weights(&store).is_empty());
    }
}
