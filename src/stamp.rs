//! `stale-guard stamp` and `stale-guard verify`: writing the revision and
//! checksum annotations onto rendered manifests, and checking them the way
//! the webhook would.
//!
//! Both read rendered multi-document YAML (the output of `kustomize build`).
//! Documents are parsed into `serde_yaml_ng` values, whose mappings keep
//! their key order; comments and formatting (quoting style, flow vs block)
//! are not kept. Empty documents are skipped. A `List` document (`kind:
//! List`, or any `*List` kind with an `items` sequence) is annotated per
//! item, never as a whole.
//!
//! The values always come from git objects: the revision is the full id of
//! the commit `--rev` names, the checksum is the overlay checksum at that
//! commit (contract section 4), never anything read from a working tree.
//! The working tree is only looked at to refuse stamping when a file or
//! symlink the checksum covers differs from the commit (`--allow-dirty`
//! turns that into a warning).

use crate::checksum::{
    Checksum, ChecksumEngine, ChecksumError, EntryKind, OverlayChecksum, SizeLimits,
};
use crate::policy::{self, Annotation, Reason, Revision};
use serde_yaml_ng::{Mapping, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const DEFAULT_REVISION_KEY: &str = "stale-guard.io/revision";
pub const DEFAULT_CHECKSUM_KEY: &str = "stale-guard.io/checksum";

/// Why stamping or verifying failed. [`exit_code`](Self::exit_code) maps
/// each to the command line's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    /// Bad input: unparsable YAML, a document that is not an object, an
    /// invalid annotation key, an unknown revision, an invalid overlay path.
    #[error("{0}")]
    Usage(String),
    /// A failed operation or check (overlay error, dirty tree, I/O).
    #[error("{0}")]
    Failed(String),
}

impl StampError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StampError::Usage(_) => 2,
            StampError::Failed(_) => 1,
        }
    }
}

/// The two annotation keys.
#[derive(Debug, Clone)]
pub struct Keys {
    pub revision: String,
    pub checksum: String,
}

impl Keys {
    /// Validated keys (a Kubernetes annotation key each).
    pub fn new(revision: &str, checksum: &str) -> Result<Keys, StampError> {
        for (flag, key) in [("--revision-key", revision), ("--checksum-key", checksum)] {
            crate::config::validate_annotation_key(key)
                .map_err(|e| StampError::Usage(format!("{flag}: {e}")))?;
        }
        if revision == checksum {
            return Err(StampError::Usage(
                "--revision-key and --checksum-key must differ".to_owned(),
            ));
        }
        Ok(Keys {
            revision: revision.to_owned(),
            checksum: checksum.to_owned(),
        })
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            revision: DEFAULT_REVISION_KEY.to_owned(),
            checksum: DEFAULT_CHECKSUM_KEY.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// YAML documents
// ---------------------------------------------------------------------------

/// A parsed document and its 1-based number in the input.
pub struct Document {
    pub number: usize,
    pub value: Value,
}

/// Parses multi-document YAML, skipping empty documents. Errors name the
/// document (counted from 1, empty ones included).
pub fn parse_documents(input: &str) -> Result<Vec<Document>, StampError> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let number = i + 1;
        let value = Value::deserialize(de)
            .map_err(|e| StampError::Usage(format!("document {number}: {e}")))?;
        match &value {
            Value::Null => continue,
            Value::Mapping(_) => {}
            other => {
                return Err(StampError::Usage(format!(
                    "document {number}: expected a Kubernetes object (a mapping), found {}",
                    value_kind(other)
                )));
            }
        }
        docs.push(Document { number, value });
    }
    Ok(docs)
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Writes documents back as multi-document YAML, `---` between them.
pub fn write_documents(docs: &[Document]) -> Result<String, StampError> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = to_yaml_1_1_safe(&doc.value).map_err(|e| {
            StampError::Failed(format!("document {}: cannot write: {e}", doc.number))
        })?;
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// True for a string that a YAML 1.1 reader (go-yaml v2, used by
/// `sigs.k8s.io/yaml`, so by kubectl and the API machinery) could read as
/// something else when written plain: `yes`, `on`, `n`... and anything that
/// starts like a number (`0755`, `1_000`, `1:30`). serde_yaml_ng only quotes
/// what YAML 1.2 would misread; quoting more is always safe.
fn needs_quotes_for_yaml_1_1(s: &str) -> bool {
    const WORDS: [&str; 32] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~", "=",
        "<<", ".inf", ".nan", ".Inf", ".NaN",
    ];
    if s.chars().any(char::is_control) {
        return false; // serde_yaml_ng writes these as block or double-quoted scalars
    }
    WORDS.contains(&s)
        || s.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// `serde_yaml_ng::to_string`, with strings a YAML 1.1 reader could misread
/// single-quoted. Such strings are first swapped for unique plain
/// placeholders, which are then replaced in the text.
fn to_yaml_1_1_safe(value: &Value) -> Result<String, serde_yaml_ng::Error> {
    fn swap(v: &mut Value, nonce: &str, quoted: &mut Vec<String>) {
        let mut placeholder = |s: &mut String| {
            if needs_quotes_for_yaml_1_1(s) {
                let original = std::mem::replace(s, format!("{nonce}_{}_", quoted.len()));
                quoted.push(original);
            }
        };
        match v {
            Value::String(s) => placeholder(s),
            Value::Sequence(items) => items.iter_mut().for_each(|i| swap(i, nonce, quoted)),
            Value::Mapping(map) => {
                let old = std::mem::take(map);
                for (mut k, mut v) in old {
                    swap(&mut k, nonce, quoted);
                    swap(&mut v, nonce, quoted);
                    map.insert(k, v);
                }
            }
            Value::Tagged(t) => swap(&mut t.value, nonce, quoted),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    let plain = serde_yaml_ng::to_string(value)?;
    let mut n = 0u32;
    let nonce = loop {
        let candidate = format!("sgquoted{n}x");
        if !plain.contains(&candidate) {
            break candidate;
        }
        n += 1;
    };
    let mut swapped = value.clone();
    let mut quoted = Vec::new();
    swap(&mut swapped, &nonce, &mut quoted);
    if quoted.is_empty() {
        return Ok(plain);
    }
    let mut text = serde_yaml_ng::to_string(&swapped)?;
    for (i, original) in quoted.iter().enumerate() {
        let single = format!("'{}'", original.replace('\'', "''"));
        text = text.replacen(&format!("{nonce}_{i}_"), &single, 1);
    }
    Ok(text)
}

fn str_field<'a>(map: &'a Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// True for a list document: `kind: List`, or a `*List` kind with `items`.
fn is_list(map: &Mapping) -> bool {
    let items = matches!(map.get("items"), Some(Value::Sequence(_)));
    match str_field(map, "kind") {
        Some("List") => true,
        Some(kind) => kind.ends_with("List") && items,
        None => false,
    }
}

/// Calls `f` on every object of a document (the items of a list, recursively).
fn for_each_object<E>(
    value: &mut Value,
    where_: &str,
    f: &mut impl FnMut(&mut Mapping, &str) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<StampError>,
{
    let Value::Mapping(map) = value else {
        return Err(StampError::Usage(format!(
            "{where_}: expected a Kubernetes object (a mapping), found {}",
            value_kind(value)
        ))
        .into());
    };
    if is_list(map) {
        match map.get_mut("items") {
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    for_each_object(item, &format!("{where_}, items[{i}]"), f)?;
                }
                Ok(())
            }
            Some(Value::Null) | None => Ok(()),
            Some(_) => Err(StampError::Usage(format!("{where_}: items is not a sequence")).into()),
        }
    } else {
        f(map, where_)
    }
}

/// `metadata.annotations` of an object, created when absent.
fn annotations_mut<'a>(
    object: &'a mut Mapping,
    where_: &str,
) -> Result<&'a mut Mapping, StampError> {
    let bad = |what: &str| StampError::Usage(format!("{where_}: {what} is not a mapping"));
    let metadata = object
        .entry(Value::from("metadata"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if metadata.is_null() {
        *metadata = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(metadata) = metadata else {
        return Err(bad("metadata"));
    };
    let annotations = metadata
        .entry(Value::from("annotations"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if annotations.is_null() {
        *annotations = Value::Mapping(Mapping::new());
    }
    match annotations {
        Value::Mapping(a) => Ok(a),
        _ => Err(bad("metadata.annotations")),
    }
}

/// `kind/namespace/name` (namespace omitted when absent).
fn describe(object: &Mapping) -> String {
    let kind = str_field(object, "kind").unwrap_or("<no kind>");
    let metadata = object.get("metadata").and_then(Value::as_mapping);
    let field = |k: &str| metadata.and_then(|m| str_field(m, k));
    let name = field("name").unwrap_or("<no name>");
    match field("namespace") {
        Some(ns) if !ns.is_empty() => format!("{kind}/{ns}/{name}"),
        _ => format!("{kind}/{name}"),
    }
}

/// The annotations as text pairs; scalar values that are not strings are
/// written as YAML would show them.
fn annotation_pairs(object: &Mapping) -> Vec<(String, String)> {
    let Some(Value::Mapping(annotations)) = object
        .get("metadata")
        .and_then(Value::as_mapping)
        .and_then(|m| m.get("annotations"))
    else {
        return Vec::new();
    };
    annotations
        .iter()
        .filter_map(|(k, v)| {
            let k = k.as_str()?.to_owned();
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k, v))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------

/// The commit `rev` names and the overlay checksum at it, from git objects.
pub fn checksum_at(
    repo: &Path,
    rev: &str,
    overlay: &str,
    limits: SizeLimits,
) -> Result<OverlayChecksum, StampError> {
    let engine = ChecksumEngine::open(repo)
        .map_err(|e| StampError::Usage(e.to_string()))?
        .with_size_limits(limits);
    let commit = engine
        .resolve_commit(rev)
        .map_err(|e| StampError::Usage(e.to_string()))?;
    let sum = engine.checksum(commit, overlay).map_err(|e| match e {
        ChecksumError::InvalidOverlayPath(_) => StampError::Usage(e.to_string()),
        ChecksumError::Overlay(_) | ChecksumError::Git(_) => {
            StampError::Failed(format!("overlay {overlay:?} at {rev}: {e}"))
        }
    })?;
    Ok((*sum).clone())
}

/// The working tree of the repository at `repo`, if it has one.
fn work_tree(repo: &Path) -> Result<Option<PathBuf>, StampError> {
    let repo = gix::open(repo)
        .map_err(|e| StampError::Usage(format!("cannot open {}: {e}", repo.display())))?;
    Ok(repo.workdir().map(Path::to_path_buf))
}

/// The closure's files and symlinks whose working-tree version differs from
/// the commit's (changed, missing, or of another type), as
/// `path (what)` strings. Empty for a bare repository.
pub fn dirty_entries(repo: &Path, sum: &OverlayChecksum) -> Result<Vec<String>, StampError> {
    use std::os::unix::ffi::OsStrExt as _;
    let Some(root) = work_tree(repo)? else {
        return Ok(Vec::new());
    };
    let mut dirty = Vec::new();
    for entry in &sum.entries {
        let path = root.join(std::ffi::OsStr::from_bytes(&entry.target));
        let shown = String::from_utf8_lossy(&entry.target).into_owned();
        let meta = std::fs::symlink_metadata(&path);
        let content = match (entry.kind, &meta) {
            (_, Err(_)) => {
                dirty.push(format!("{shown} (missing)"));
                continue;
            }
            (EntryKind::File, Ok(m)) if m.file_type().is_file() => std::fs::read(&path)
                .map_err(|e| StampError::Failed(format!("reading {}: {e}", path.display())))?,
            (EntryKind::Link, Ok(m)) if m.file_type().is_symlink() => std::fs::read_link(&path)
                .map_err(|e| StampError::Failed(format!("reading {}: {e}", path.display())))?
                .as_os_str()
                .as_bytes()
                .to_vec(),
            (EntryKind::File | EntryKind::Link, Ok(_)) => {
                dirty.push(format!("{shown} (type changed)"));
                continue;
            }
            _ => continue,
        };
        let digest: [u8; 32] = Sha256::digest(&content).into();
        if digest != entry.digest {
            dirty.push(format!("{shown} (modified)"));
        }
    }
    Ok(dirty)
}

// ---------------------------------------------------------------------------
// stamp
// ---------------------------------------------------------------------------

pub struct StampOptions<'a> {
    pub repo: &'a Path,
    pub overlay: &'a str,
    pub rev: &'a str,
    pub allow_dirty: bool,
    pub keys: Keys,
    /// The checksum's size limits (the webhook's `limits`).
    pub limits: SizeLimits,
}

/// What [`stamp`] produced.
pub struct Stamped {
    pub output: String,
    pub revision: String,
    pub checksum: Checksum,
    pub objects: usize,
    /// Dirty files tolerated by `--allow-dirty`.
    pub dirty: Vec<String>,
}

/// Annotates every object of `input` with the revision and checksum at `rev`.
pub fn stamp(options: &StampOptions<'_>, input: &str) -> Result<Stamped, StampError> {
    let mut docs = parse_documents(input)?;
    if docs.is_empty() {
        // A failed render upstream in a pipe (`kustomize build | stamp`)
        // looks like this; passing it on could make a controller prune.
        return Err(StampError::Usage(
            "no objects on stdin (did the render fail?)".to_owned(),
        ));
    }
    let sum = checksum_at(options.repo, options.rev, options.overlay, options.limits)?;
    let dirty = dirty_entries(options.repo, &sum)?;
    if !dirty.is_empty() && !options.allow_dirty {
        return Err(StampError::Failed(format!(
            "the working tree differs from {} ({}) under overlay {:?}: {}; the rendered \
             manifests may not match the commit: commit or stash the changes, render from a \
             clean checkout, or pass --allow-dirty",
            options.rev,
            sum.commit,
            options.overlay,
            dirty.join(", ")
        )));
    }
    annotate(
        &mut docs,
        &options.keys,
        &sum.commit.to_string(),
        &sum.checksum,
    )?;
    let objects = docs.iter().map(|d| count_objects(&d.value)).sum();
    Ok(Stamped {
        output: write_documents(&docs)?,
        revision: sum.commit.to_string(),
        checksum: sum.checksum,
        objects,
        dirty,
    })
}

/// Sets both annotations on every object of `docs`.
pub fn annotate(
    docs: &mut [Document],
    keys: &Keys,
    revision: &str,
    checksum: &Checksum,
) -> Result<(), StampError> {
    for doc in docs {
        let where_ = format!("document {}", doc.number);
        for_each_object(&mut doc.value, &where_, &mut |object, where_| {
            let annotations = annotations_mut(object, where_)?;
            annotations.insert(Value::from(keys.revision.as_str()), Value::from(revision));
            annotations.insert(
                Value::from(keys.checksum.as_str()),
                Value::from(checksum.to_string()),
            );
            Ok::<(), StampError>(())
        })?;
    }
    Ok(())
}

fn count_objects(value: &Value) -> usize {
    match value {
        Value::Mapping(map) if is_list(map) => match map.get("items") {
            Some(Value::Sequence(items)) => items.iter().map(count_objects).sum(),
            _ => 0,
        },
        _ => 1,
    }
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

/// One object's verdict.
pub struct ObjectReport {
    /// `kind/namespace/name`.
    pub object: String,
    /// `None` when the object passes.
    pub failure: Option<(Reason, String)>,
}

pub struct Verification {
    pub head: String,
    pub checksum: Checksum,
    pub objects: Vec<ObjectReport>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        !self.objects.is_empty() && self.objects.iter().all(|o| o.failure.is_none())
    }

    /// One line per object, then a summary.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            match &o.failure {
                None => out.push_str(&format!("ok    {}\n", o.object)),
                Some((reason, why)) => {
                    out.push_str(&format!("FAIL  {}: {reason}: {why}\n", o.object))
                }
            }
        }
        let failed = self.objects.iter().filter(|o| o.failure.is_some()).count();
        if self.objects.is_empty() {
            out.push_str("no objects found: nothing was verified\n");
        } else {
            out.push_str(&format!(
                "{} objects, {failed} failed (head {}, checksum {})\n",
                self.objects.len(),
                self.head,
                self.checksum
            ));
        }
        out
    }
}

/// Checks every object of `input` against the head `rev` names: the
/// revision must be that commit, the checksum the overlay checksum at it.
/// The annotations are read exactly as the webhook reads them
/// ([`policy::read_annotation`], [`Revision::parse`]), and the first failing
/// check is reported with the webhook's reason code.
pub fn verify(
    repo: &Path,
    overlay: &str,
    rev: &str,
    keys: &Keys,
    limits: SizeLimits,
    input: &str,
) -> Result<Verification, StampError> {
    let mut docs = parse_documents(input)?;
    let sum = checksum_at(repo, rev, overlay, limits)?;
    let head = Revision::parse(&sum.commit.to_string()).map_err(StampError::Failed)?;
    let objects = report_each(&mut docs, |object| {
        check_object(object, keys, head, &sum.checksum)
    })?;
    Ok(Verification {
        head: head.to_hex(),
        checksum: sum.checksum,
        objects,
    })
}

/// `verify --content`: each object compared with the object of the same
/// identity in the overlay's rendering at `rev`, by the comparison the
/// webhook uses (contract section 8), so CI and the webhook agree. The
/// annotations are not read.
pub async fn verify_content(
    repo: &Path,
    overlay: &str,
    rev: &str,
    limits: SizeLimits,
    settings: crate::render::RenderSettings,
    input: &str,
) -> Result<Verification, StampError> {
    let mut docs = parse_documents(input)?;
    let sum = checksum_at(repo, rev, overlay, limits)?;
    let engine = ChecksumEngine::open(repo)
        .map_err(|e| StampError::Usage(e.to_string()))?
        .with_size_limits(limits);
    let renderer = crate::render::Renderer::new(settings);
    let rendering = renderer
        .render(engine, sum.commit, overlay, sum.checksum)
        .await
        .map_err(|e| {
            StampError::Failed(format!(
                "OverlayError: overlay {overlay:?} cannot be rendered at {rev}: {e}"
            ))
        })?;
    let objects = report_each(&mut docs, |object| content_failure(object, &rendering, rev))?;
    Ok(Verification {
        head: sum.commit.to_string(),
        checksum: sum.checksum,
        objects,
    })
}

/// A report for every object of `docs` (lists included), each judged by
/// `check`: the one loop of both `verify` modes.
fn report_each(
    docs: &mut [Document],
    mut check: impl FnMut(&Mapping) -> Option<(Reason, String)>,
) -> Result<Vec<ObjectReport>, StampError> {
    let mut objects = Vec::new();
    for doc in docs {
        let where_ = format!("document {}", doc.number);
        for_each_object(&mut doc.value, &where_, &mut |object, _| {
            objects.push(ObjectReport {
                object: describe(object),
                failure: check(object),
            });
            Ok::<(), StampError>(())
        })?;
    }
    Ok(objects)
}

/// Why one input object would be denied by content verification, if it
/// would.
fn content_failure(
    object: &Mapping,
    rendering: &crate::render::Rendering,
    rev: &str,
) -> Option<(Reason, String)> {
    let json = match serde_json::to_value(object) {
        Ok(json) => json,
        Err(e) => {
            return Some((
                Reason::NotRendered,
                crate::echo::message(format!("the object cannot be read as JSON: {e}")),
            ));
        }
    };
    let Some(identity) = crate::content::Identity::of(&json) else {
        return Some((
            Reason::NotRendered,
            "the object has no apiVersion, kind or metadata.name".to_owned(),
        ));
    };
    match rendering.find(&identity) {
        None => Some((
            Reason::NotRendered,
            format!("the rendering at {rev} has no {identity}"),
        )),
        Some(rendered) => crate::content::compare(rendered, &json)
            .err()
            .map(|d| (Reason::ContentMismatch, crate::echo::message(d.to_string()))),
    }
}

fn near_miss_hint(near_misses: &[String]) -> String {
    if near_misses.is_empty() {
        String::new()
    } else {
        format!(
            " (found near-miss key {}: a key must be written whole, never split on dots)",
            near_misses
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn check_object(
    object: &Mapping,
    keys: &Keys,
    head: Revision,
    expected: &Checksum,
) -> Option<(Reason, String)> {
    let pairs = annotation_pairs(object);
    let iter = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let revision = match policy::read_annotation(iter.clone(), &keys.revision, Revision::parse) {
        Annotation::Missing { near_misses } => {
            return Some((
                Reason::MissingRevision,
                format!(
                    "no {} annotation{}",
                    keys.revision,
                    near_miss_hint(&near_misses)
                ),
            ));
        }
        Annotation::Malformed { value, why } => {
            return Some((
                Reason::MalformedRevision,
                format!("{} is {value:?}: {why}", keys.revision),
            ));
        }
        Annotation::Valid(r) => r,
    };
    let found = match policy::read_annotation(iter, &keys.checksum, |v| {
        v.parse::<Checksum>().map_err(|e| e.to_string())
    }) {
        Annotation::Missing { near_misses } => {
            return Some((
                Reason::MissingChecksum,
                format!(
                    "no {} annotation{}",
                    keys.checksum,
                    near_miss_hint(&near_misses)
                ),
            ));
        }
        Annotation::Malformed { value, why } => {
            return Some((
                Reason::MalformedChecksum,
                format!("{} is {value:?}: {why}", keys.checksum),
            ));
        }
        Annotation::Valid(c) => c,
    };
    if revision != head {
        return Some((
            Reason::StaleRevision,
            format!(
                "revision {} is not the head {}; re-render and stamp at head",
                revision.to_hex(),
                head.to_hex()
            ),
        ));
    }
    if found != *expected {
        return Some((
            Reason::ChecksumMismatch,
            format!("checksum {found} differs from {expected}, the overlay checksum at head"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn stamped(input: &str) -> String {
        let mut docs = parse_documents(input).map_err(|e| e.to_string()).unwrap();
        let sum: Checksum = SUM.parse().unwrap();
        annotate(&mut docs, &Keys::default(), &"a".repeat(40), &sum).unwrap();
        write_documents(&docs).unwrap()
    }

    #[test]
    fn annotates_objects_and_list_items_in_order() {
        let out = stamped(
            "---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {x: y}\ndata:\n  z: '1'\n  a: 'on'\n---\napiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: s}\n",
        );
        let docs = parse_documents(&out).map_err(|e| e.to_string()).unwrap();
        assert_eq!(docs.len(), 2);
        let cm = docs[0].value.as_mapping().unwrap();
        let keys: Vec<_> = cm.keys().filter_map(Value::as_str).collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "data"]);
        let data: Vec<_> = cm["data"]
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(data, ["z", "a"]);
        assert_eq!(cm["data"]["a"].as_str(), Some("on"));
        assert_eq!(
            cm["metadata"]["annotations"][DEFAULT_CHECKSUM_KEY].as_str(),
            Some(SUM)
        );
        let list = docs[1].value.as_mapping().unwrap();
        assert!(list.get("metadata").is_none());
        assert_eq!(
            list["items"][0]["metadata"]["annotations"][DEFAULT_REVISION_KEY].as_str(),
            Some("a".repeat(40).as_str())
        );
    }

    #[test]
    fn strings_a_yaml_1_1_reader_would_misread_are_quoted() {
        let input = "data:\n  'on': 'yes'\n  mode: 'off'\n  octal: '0755'\n  big: '1_000'\n  time: '1:30'\n  y: n\n  plain: nginx:1.27\n  it's: \"1 o'clock\"\n  text: |\n    a\n    b\n";
        let docs = parse_documents(input).map_err(|e| e.to_string()).unwrap();
        let out = write_documents(&docs).unwrap();
        for quoted in [
            "'on': 'yes'",
            "mode: 'off'",
            "octal: '0755'",
            "big: '1_000'",
            "time: '1:30'",
            "'y': 'n'",
            "plain: nginx:1.27",
            "it's: '1 o''clock'",
        ] {
            assert!(out.contains(quoted), "{quoted} in\n{out}");
        }
        let again = parse_documents(&out).map_err(|e| e.to_string()).unwrap();
        assert_eq!(again[0].value, docs[0].value);
    }

    #[test]
    fn bad_documents_are_named() {
        let e = parse_documents("kind: A\n---\nkind: [\n").err().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("document 2"), "{e}");
        let e = parse_documents("kind: A\n---\n- 1\n").err().unwrap();
        assert!(e.to_string().contains("document 2"), "{e}");
    }

    #[test]
    fn verify_reasons() {
        let head = Revision::parse(&"b".repeat(40)).unwrap();
        let sum: Checksum = SUM.parse().unwrap();
        let keys = Keys::default();
        let obj = |ann: &str| -> Mapping {
            serde_yaml_ng::from_str(&format!(
                "kind: X\nmetadata:\n  name: n\n  annotations: {ann}\n"
            ))
            .unwrap()
        };
        let reason = |ann: &str| check_object(&obj(ann), &keys, head, &sum).map(|(r, _)| r);
        let rev = "b".repeat(40);
        assert_eq!(reason("{}"), Some(Reason::MissingRevision));
        assert_eq!(
            reason(&format!(
                "{{stale-guard.io/revision: abc, stale-guard.io/checksum: {SUM}}}"
            )),
            Some(Reason::MalformedRevision)
        );
        assert_eq!(
            reason(&format!(
                "{{stale-guard.io/revision: {rev}, stale-guard: x}}"
            )),
            Some(Reason::MissingChecksum)
        );
        assert_eq!(
            reason(&format!(
                "{{stale-guard.io/revision: {rev}, stale-guard.io/checksum: sha256:AB}}"
            )),
            Some(Reason::MalformedChecksum)
        );
        assert_eq!(
            reason(&format!(
                "{{stale-guard.io/revision: {}, stale-guard.io/checksum: {SUM}}}",
                "c".repeat(40)
            )),
            Some(Reason::StaleRevision)
        );
        let other = SUM.replace("01", "02");
        assert_eq!(
            reason(&format!(
                "{{stale-guard.io/revision: 'main@sha1:{rev}', stale-guard.io/checksum: {other}}}"
            )),
            Some(Reason::ChecksumMismatch)
        );
        assert_eq!(
            reason(&format!(
                "{{stale-guard.io/revision: 'sha1:{}', stale-guard.io/checksum: {SUM}}}",
                rev.to_uppercase()
            )),
            None
        );
    }
}
