//! What Flux and Argo CD add to an overlay before they build it (contract
//! section 9), as data ([`BuildOptions`]) and as the edit of the overlay's
//! kustomization file in the private tree ([`edit_kustomization`],
//! [`prepare`]), made the way the controllers make it:
//!
//! - Flux (fluxcd/pkg `kustomize/kustomize_generator.go`): the overlay's
//!   kustomization file, or one generated from the directory's YAML files
//!   when it has none, gets `namespace` (`spec.targetNamespace`),
//!   `namePrefix`, `nameSuffix` (each replacing the overlay's own),
//!   `patches` and `components` appended, and `images` replacing an entry
//!   of the same name or appended. `spec.commonMetadata` is not part of
//!   the build: kustomize-controller sets those labels and annotations on
//!   each object's `metadata` after the build and the substitution
//!   ([`apply_common_metadata`]), so selectors and templates keep theirs.
//! - Argo CD (argo-cd `util/kustomize/kustomize.go`), in its order:
//!   `kustomize edit set nameprefix`, `set namesuffix`, `set image`, `set
//!   replicas`, `add label` (into `commonLabels`; an overlay label of the
//!   same key is an error unless `forceCommonLabels`), `add annotation`
//!   (likewise), `set namespace`, the patches appended to `patches`, and
//!   `add component` (a component already listed is skipped).

use super::varsub;
use crate::argo::ApplicationSpec;
use crate::content::Identity;
use crate::flux::{Image, KustomizationSpec, Patch};
use serde::Serialize;
use serde_json::Value;
use serde_yaml_ng::{Mapping, Value as Yaml};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The names kustomize recognises, in the order it looks for them.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// How the controller builds an overlay. `None` is plain `kustomize
/// build` of the overlay as committed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum BuildOptions {
    #[default]
    None,
    Flux(FluxBuild),
    Argo(ArgoBuild),
}

/// A Flux Kustomization's build fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FluxBuild {
    pub target_namespace: Option<String>,
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    pub patches: Vec<Patch>,
    pub images: Vec<Image>,
    pub components: Vec<String>,
    /// `spec.commonMetadata`, set on each rendered object's metadata.
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    /// `spec.postBuild` is set: the variables given with the rendering are
    /// substituted ([`super::varsub`]).
    pub post_build: bool,
    /// kustomize-controller's `StrictPostBuildSubstitutions`: an unset
    /// variable without a default fails the build. Off by default (as in
    /// the controller before Flux 2.9).
    pub strict_substitution: bool,
}

/// An Argo CD Application's `spec.source.kustomize` and destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArgoBuild {
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    /// `kustomize edit set image` arguments.
    pub images: Vec<String>,
    /// (name, count) for `kustomize edit set replicas`.
    pub replicas: Vec<(String, i64)>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub force_common_labels: bool,
    pub force_common_annotations: bool,
    pub namespace: Option<String>,
    pub patches: Vec<Patch>,
    pub components: Vec<String>,
    /// `spec.destination.namespace`: Argo CD does not give it to
    /// kustomize; it places rendered objects that have no namespace there
    /// when it applies them, which the lookup of a namespace-less rendered
    /// object by the request's namespace already covers. Not part of the
    /// digest: it does not change the rendering.
    #[serde(skip)]
    pub destination_namespace: Option<String>,
}

fn set(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

impl BuildOptions {
    /// The build of a Flux Kustomization. Refuses a component that is not
    /// a local relative path (Flux refuses it too).
    pub fn flux(spec: &KustomizationSpec) -> Result<BuildOptions, String> {
        for c in &spec.components {
            if !local_relative(c) {
                return Err(format!(
                    "component path {} must be local and relative",
                    crate::echo::value(&format!("{c:?}"))
                ));
            }
        }
        let meta = spec.common_metadata.clone().unwrap_or_default();
        Ok(BuildOptions::Flux(FluxBuild {
            target_namespace: set(&spec.target_namespace),
            name_prefix: set(&spec.name_prefix),
            name_suffix: set(&spec.name_suffix),
            patches: spec.patches.clone(),
            images: spec.images.clone(),
            components: spec.components.clone(),
            common_labels: meta.labels,
            common_annotations: meta.annotations,
            post_build: spec.post_build.is_some(),
            strict_substitution: false,
        }))
    }

    /// The build of an Argo CD Application with a single source. Refuses
    /// what stale-guard does not reproduce, naming it: multiple sources,
    /// a named kustomize version, `labelWithoutSelector`,
    /// `labelIncludeTemplates`, `commonAnnotationsEnvsubst`,
    /// `ignoreMissingComponents`, and `$` in images or labels (Argo CD
    /// substitutes its build environment there).
    pub fn argo(spec: &ApplicationSpec) -> Result<BuildOptions, String> {
        if spec.sources.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err("multi-source Applications are not rendered".to_owned());
        }
        let k = spec
            .source
            .as_ref()
            .and_then(|s| s.kustomize.clone())
            .unwrap_or_default();
        for (flag, on) in [
            ("labelWithoutSelector", k.label_without_selector),
            ("labelIncludeTemplates", k.label_include_templates),
            ("commonAnnotationsEnvsubst", k.common_annotations_envsubst),
            ("ignoreMissingComponents", k.ignore_missing_components),
            (
                "version",
                k.version.as_deref().is_some_and(|v| !v.is_empty()),
            ),
        ] {
            if on {
                return Err(format!(
                    "spec.source.kustomize.{flag} is not reproduced by stale-guard"
                ));
            }
        }
        if let Some(v) = k
            .images
            .iter()
            .chain(k.common_labels.values())
            .find(|v| v.contains('$'))
        {
            return Err(format!(
                "{} uses Argo CD's build environment, which is not reproduced",
                crate::echo::value(v)
            ));
        }
        let mut replicas = Vec::new();
        for r in &k.replicas {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            let count = match &r.count {
                Some(IntOrString::Int(n)) => i64::from(*n),
                Some(IntOrString::String(s)) => s.trim().parse::<i64>().map_err(|_| {
                    format!(
                        "replicas count {} of {} is not a number",
                        crate::echo::value(s),
                        crate::echo::value(&r.name)
                    )
                })?,
                None => 0,
            };
            replicas.push((r.name.clone(), count));
        }
        Ok(BuildOptions::Argo(ArgoBuild {
            name_prefix: set(&k.name_prefix),
            name_suffix: set(&k.name_suffix),
            images: k.images,
            replicas,
            common_labels: k.common_labels,
            common_annotations: k.common_annotations,
            force_common_labels: k.force_common_labels,
            force_common_annotations: k.force_common_annotations,
            namespace: set(&k.namespace),
            patches: k.patches,
            components: k.components,
            destination_namespace: set(&spec.destination.namespace),
        }))
    }

    /// A stable digest of what changes the rendering: equal options have
    /// equal digests across runs and versions of this build (the
    /// serialisation is fixed: field order, sorted maps).
    pub fn digest(&self) -> BuildDigest {
        let mut h = Sha256::new();
        h.update(b"stale-guard build options v1\0");
        // Serialising plain data to a Vec cannot fail.
        h.update(serde_json::to_vec(self).unwrap_or_default());
        BuildDigest(h.finalize().into())
    }

    /// The components the controller adds, as written.
    pub fn components(&self) -> &[String] {
        match self {
            BuildOptions::None => &[],
            BuildOptions::Flux(f) => &f.components,
            BuildOptions::Argo(a) => &a.components,
        }
    }

    /// The repository paths of the local components the controller adds
    /// to `overlay` (a cleaned repository path): their closures are not in
    /// the overlay's, so the renderer writes them and keys the rendering
    /// by their checksums too. The bool is true when a remote component
    /// is added (kustomize fetches it). A path that leaves the repository
    /// is an error.
    pub fn component_paths(&self, overlay: &str) -> Result<(Vec<String>, bool), String> {
        let base = if overlay == "." { "" } else { overlay };
        let mut paths = Vec::new();
        let mut remote = false;
        for c in self.components() {
            if !local_relative(c) {
                remote = true;
                continue;
            }
            let joined = crate::tree::join_clean(base.as_bytes(), c.as_bytes())
                .map_err(|e| format!("component {}: {e}", crate::echo::value(c)))?;
            let path = String::from_utf8_lossy(&joined).into_owned();
            let path = if path.is_empty() {
                ".".to_owned()
            } else {
                path
            };
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        Ok((paths, remote))
    }

    /// Whether the variables given with a rendering are substituted.
    pub fn substitutes(&self) -> bool {
        matches!(self, BuildOptions::Flux(f) if f.post_build)
    }
}

/// [`BuildOptions::digest`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildDigest(pub [u8; 32]);

impl fmt::Display for BuildDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for BuildDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A digest of substitution variables (names and values,
/// length-prefixed). Kept in memory only: values may come from Secrets.
pub fn variables_digest(vars: &BTreeMap<String, String>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"stale-guard variables v1\0");
    for (k, v) in vars {
        for s in [k, v] {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    h.finalize().into()
}

/// Flux's `IsLocalRelativePath`: not absolute and not a remote URL.
fn local_relative(path: &str) -> bool {
    !(path.is_empty()
        || path.starts_with('/')
        || path.contains("://")
        || path.starts_with("git@")
        || path.starts_with("git::")
        || path.starts_with("github.com/"))
}

fn key(k: &str) -> Yaml {
    Yaml::String(k.to_owned())
}

fn string_field(m: &mut Mapping, k: &str, v: &Option<String>) {
    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
        m.insert(key(k), Yaml::String(v.to_owned()));
    }
}

/// The sequence at `k`, made if absent; an error if something else is
/// there.
fn seq<'a>(m: &'a mut Mapping, k: &str) -> Result<&'a mut Vec<Yaml>, String> {
    let slot = m.entry(key(k)).or_insert(Yaml::Sequence(Vec::new()));
    if slot.is_null() {
        *slot = Yaml::Sequence(Vec::new());
    }
    match slot {
        Yaml::Sequence(s) => Ok(s),
        _ => Err(format!("the kustomization's {k} is not a list")),
    }
}

fn map<'a>(m: &'a mut Mapping, k: &str) -> Result<&'a mut Mapping, String> {
    let slot = m.entry(key(k)).or_insert(Yaml::Mapping(Mapping::new()));
    if slot.is_null() {
        *slot = Yaml::Mapping(Mapping::new());
    }
    match slot {
        Yaml::Mapping(s) => Ok(s),
        _ => Err(format!("the kustomization's {k} is not a map")),
    }
}

fn patch_yaml(p: &Patch) -> Yaml {
    let mut m = Mapping::new();
    string_field(&mut m, "path", &p.path);
    string_field(&mut m, "patch", &p.patch);
    if let Some(t) = &p.target {
        let mut tm = Mapping::new();
        string_field(&mut tm, "group", &t.group);
        string_field(&mut tm, "version", &t.version);
        string_field(&mut tm, "kind", &t.kind);
        string_field(&mut tm, "name", &t.name);
        string_field(&mut tm, "namespace", &t.namespace);
        string_field(&mut tm, "labelSelector", &t.label_selector);
        string_field(&mut tm, "annotationSelector", &t.annotation_selector);
        m.insert(key("target"), Yaml::Mapping(tm));
    }
    Yaml::Mapping(m)
}

fn image_yaml(i: &Image) -> Yaml {
    let mut m = Mapping::new();
    m.insert(key("name"), Yaml::String(i.name.clone()));
    string_field(&mut m, "newName", &i.new_name);
    string_field(&mut m, "newTag", &i.new_tag);
    string_field(&mut m, "digest", &i.digest);
    Yaml::Mapping(m)
}

fn named<'a>(items: &'a mut [Yaml], name: &str) -> Option<&'a mut Yaml> {
    items
        .iter_mut()
        .find(|i| i.get("name").and_then(Yaml::as_str) == Some(name))
}

/// The kustomization file `text` edited as the controller edits it
/// (`BuildOptions::None` returns it unchanged).
pub fn edit_kustomization(options: &BuildOptions, text: &str) -> Result<String, String> {
    use serde::Deserialize as _;
    if matches!(options, BuildOptions::None) {
        return Ok(text.to_owned());
    }
    // Only the first document counts, for kustomize as for the checksum.
    let value = match serde_yaml_ng::Deserializer::from_str(text).next() {
        Some(doc) => Yaml::deserialize(doc)
            .map_err(|e| format!("cannot read the kustomization file: {e}"))?,
        None => Yaml::Null,
    };
    let mut m = match value {
        Yaml::Mapping(m) => m,
        Yaml::Null => Mapping::new(),
        _ => return Err("the kustomization file is not a map".to_owned()),
    };
    match options {
        BuildOptions::None => {}
        BuildOptions::Flux(f) => edit_flux(f, &mut m)?,
        BuildOptions::Argo(a) => edit_argo(a, &mut m)?,
    }
    serde_yaml_ng::to_string(&Yaml::Mapping(m))
        .map_err(|e| format!("cannot write the kustomization file: {e}"))
}

fn edit_flux(f: &FluxBuild, m: &mut Mapping) -> Result<(), String> {
    string_field(m, "namespace", &f.target_namespace);
    string_field(m, "namePrefix", &f.name_prefix);
    string_field(m, "nameSuffix", &f.name_suffix);
    if !f.patches.is_empty() {
        seq(m, "patches")?.extend(f.patches.iter().map(patch_yaml));
    }
    if !f.components.is_empty() {
        seq(m, "components")?.extend(f.components.iter().map(|c| Yaml::String(c.clone())));
    }
    if !f.images.is_empty() {
        let images = seq(m, "images")?;
        for image in &f.images {
            let new = image_yaml(image);
            match named(images, &image.name) {
                Some(slot) => *slot = new,
                None => images.push(new),
            }
        }
    }
    Ok(())
}

/// An image argument: name, new name, new tag, digest.
type ImageArg = (String, Option<String>, Option<String>, Option<String>);

/// `kustomize edit set image` argument forms: `name=newName[:tag][@digest]`,
/// `name[:tag][@digest]`; `*` as the new name or tag keeps the overlay's.
fn parse_image(arg: &str) -> Result<ImageArg, String> {
    let split = |s: &str| -> (String, Option<String>, Option<String>) {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (s, None),
        };
        // A tag is after the last `:` when that is all [a-zA-Z0-9._-] or `*`.
        if let Some((name, tag)) = rest.rsplit_once(':')
            && (tag == "*"
                || tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return (
                name.to_owned(),
                Some(tag.to_owned()).filter(|t| !t.is_empty()),
                digest,
            );
        }
        (rest.to_owned(), None, digest)
    };
    match arg.split('=').collect::<Vec<_>>().as_slice() {
        [name, new] => {
            let (new_name, tag, digest) = split(new);
            Ok((
                name.to_string(),
                Some(new_name).filter(|n| !n.is_empty()),
                tag,
                digest,
            ))
        }
        [one] if !one.is_empty() => {
            let (name, tag, digest) = split(one);
            Ok((name, None, tag, digest))
        }
        _ => Err(format!("invalid image {}", crate::echo::value(arg))),
    }
}

fn edit_argo(a: &ArgoBuild, m: &mut Mapping) -> Result<(), String> {
    string_field(m, "namePrefix", &a.name_prefix);
    string_field(m, "nameSuffix", &a.name_suffix);
    if !a.images.is_empty() {
        let images = seq(m, "images")?;
        for arg in &a.images {
            let (name, new_name, tag, digest) = parse_image(arg)?;
            let old = named(images, &name).map(|y| y.clone());
            let keep = |field: &str, v: Option<String>| match v.as_deref() {
                Some("*") => old
                    .as_ref()
                    .and_then(|o| o.get(field))
                    .and_then(Yaml::as_str)
                    .map(str::to_owned),
                _ => v,
            };
            let new = image_yaml(&Image {
                name: name.clone(),
                new_name: keep("newName", new_name),
                new_tag: keep("newTag", tag),
                digest,
            });
            match named(images, &name) {
                Some(slot) => *slot = new,
                None => images.push(new),
            }
        }
    }
    if !a.replicas.is_empty() {
        let replicas = seq(m, "replicas")?;
        for (name, count) in &a.replicas {
            let mut r = Mapping::new();
            r.insert(key("name"), Yaml::String(name.clone()));
            r.insert(key("count"), Yaml::Number((*count).into()));
            match named(replicas, name) {
                Some(slot) => *slot = Yaml::Mapping(r),
                None => replicas.push(Yaml::Mapping(r)),
            }
        }
    }
    for (field, what, values, force) in [
        (
            "commonLabels",
            "label",
            &a.common_labels,
            a.force_common_labels,
        ),
        (
            "commonAnnotations",
            "annotation",
            &a.common_annotations,
            a.force_common_annotations,
        ),
    ] {
        if values.is_empty() {
            continue;
        }
        let target = map(m, field)?;
        for (k, v) in values {
            if !force && target.contains_key(k.as_str()) {
                return Err(format!(
                    "{what} {} already in kustomization file (Argo CD runs kustomize edit add {what} without --force)",
                    crate::echo::value(k)
                ));
            }
            target.insert(key(k), Yaml::String(v.clone()));
        }
    }
    string_field(m, "namespace", &a.namespace);
    if !a.patches.is_empty() {
        seq(m, "patches")?.extend(a.patches.iter().map(patch_yaml));
    }
    if !a.components.is_empty() {
        let components = seq(m, "components")?;
        for c in &a.components {
            if !components.iter().any(|x| x.as_str() == Some(c)) {
                components.push(Yaml::String(c.clone()));
            }
        }
    }
    Ok(())
}

/// Edits the kustomization file of the overlay directory `dir` (inside
/// the private tree `root`) for `options`. The file is replaced by a new
/// regular file: a symlinked kustomization file is not written through,
/// so no other file of the tree changes. Flux generates a kustomization
/// file from the directory's YAML files when there is none.
pub fn prepare(options: &BuildOptions, root: &Path, dir: &Path) -> Result<(), String> {
    if matches!(options, BuildOptions::None) {
        return Ok(());
    }
    let real_root = root.canonicalize().map_err(|e| e.to_string())?;
    let real_dir = dir
        .canonicalize()
        .map_err(|e| format!("the overlay directory: {e}"))?;
    if !real_dir.starts_with(&real_root) {
        return Err("the overlay directory leads out of the tree".to_owned());
    }
    let existing = KUSTOMIZATION_FILES
        .iter()
        .map(|n| real_dir.join(n))
        .find(|p| p.is_file());
    let (path, text) = match existing {
        Some(p) => {
            let text = fs::read_to_string(&p)
                .map_err(|e| format!("cannot read the kustomization file: {e}"))?;
            (p, text)
        }
        None if matches!(options, BuildOptions::Flux(_)) => (
            real_dir.join(KUSTOMIZATION_FILES[0]),
            generated_kustomization(&real_dir)?,
        ),
        None => return Err("the overlay has no kustomization file".to_owned()),
    };
    let edited = edit_kustomization(options, &text)?;
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot replace the kustomization file: {e}")),
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&path)
        .map_err(|e| format!("cannot write the kustomization file: {e}"))?;
    out.write_all(edited.as_bytes())
        .map_err(|e| format!("cannot write the kustomization file: {e}"))
}

/// Flux's generated kustomization: every `.yaml`/`.yml` file under `dir`
/// and every subdirectory holding a kustomization file (not descended
/// into), walked in lexical order without following directory links.
fn generated_kustomization(dir: &Path) -> Result<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .map(|r| format!("./{}", r.to_string_lossy()))
                .map_err(|e| e.to_string())?;
            let ty = e.file_type().map_err(|e| e.to_string())?;
            if ty.is_dir() {
                if KUSTOMIZATION_FILES.iter().any(|n| path.join(n).is_file()) {
                    out.push(rel);
                } else {
                    walk(base, &path, out)?;
                }
            } else if matches!(
                path.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut resources = Vec::new();
    walk(dir, dir, &mut resources)?;
    let mut m = Mapping::new();
    m.insert(key("apiVersion"), key("kustomize.config.k8s.io/v1beta1"));
    m.insert(key("kind"), key("Kustomization"));
    m.insert(
        key("resources"),
        Yaml::Sequence(resources.into_iter().map(Yaml::String).collect()),
    );
    serde_yaml_ng::to_string(&Yaml::Mapping(m)).map_err(|e| e.to_string())
}

/// kustomize-controller's `SetCommonMetadata`: each label and annotation
/// set on every object's `metadata` (over a value the object has).
pub fn apply_common_metadata(
    objects: &mut HashMap<Identity, Value>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) {
    if labels.is_empty() && annotations.is_empty() {
        return;
    }
    for object in objects.values_mut() {
        let Some(meta) = object
            .as_object_mut()
            .map(|o| {
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()))
            })
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for (field, values) in [("labels", labels), ("annotations", annotations)] {
            if values.is_empty() {
                continue;
            }
            let slot = meta
                .entry(field)
                .or_insert_with(|| Value::Object(Default::default()));
            if !slot.is_object() {
                *slot = Value::Object(Default::default());
            }
            if let Some(m) = slot.as_object_mut() {
                for (k, v) in values {
                    m.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
    }
}

/// Substitution, then common metadata: kustomize-controller's order
/// after `kustomize build`.
/// The substituted output is capped at `max_bytes`.
pub fn post_process(
    options: &BuildOptions,
    vars: &BTreeMap<String, String>,
    output: Vec<u8>,
    max_bytes: u64,
) -> Result<Vec<u8>, String> {
    match options {
        BuildOptions::Flux(f) if f.post_build => {
            varsub::substitute_output(&output, vars, f.strict_substitution, max_bytes)
        }
        _ => Ok(output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flux::{CommonMetadata, PatchTarget, PostBuild};

    fn yaml(s: &str) -> Yaml {
        serde_yaml_ng::from_str(s).unwrap()
    }

    fn flux(spec: KustomizationSpec, base: &str) -> Yaml {
        let o = BuildOptions::flux(&spec).unwrap();
        yaml(&edit_kustomization(&o, base).unwrap())
    }

    fn argo(k: crate::argo::ArgoKustomize, base: &str) -> Result<Yaml, String> {
        let spec = ApplicationSpec {
            source: Some(crate::argo::ApplicationSource {
                kustomize: Some(k),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = BuildOptions::argo(&spec)?;
        edit_kustomization(&o, base).map(|t| yaml(&t))
    }

    const BASE: &str = "resources: [a.yaml]\nnamespace: own\nnamePrefix: own-\nimages:\n- name: nginx\n  newTag: '1.0'\n- name: redis\n  newName: my/redis\npatches:\n- path: p.yaml\ncomponents: [c1]\n";

    #[test]
    fn flux_sets_namespace_prefix_suffix_over_the_overlays() {
        let out = flux(
            KustomizationSpec {
                target_namespace: Some("apps".into()),
                name_prefix: Some("p-".into()),
                name_suffix: Some("-s".into()),
                ..Default::default()
            },
            BASE,
        );
        assert_eq!(out["namespace"], "apps");
        assert_eq!(out["namePrefix"], "p-");
        assert_eq!(out["nameSuffix"], "-s");
        // Empty fields leave the overlay's.
        let out = flux(
            KustomizationSpec {
                target_namespace: Some(String::new()),
                ..Default::default()
            },
            BASE,
        );
        assert_eq!(out["namespace"], "own");
        assert_eq!(out["namePrefix"], "own-");
    }

    #[test]
    fn only_the_first_document_of_the_kustomization_counts() {
        let out = flux(
            KustomizationSpec {
                name_prefix: Some("p-".into()),
                ..Default::default()
            },
            "resources: [a.yaml]\n---\nresources: [b.yaml]\n",
        );
        assert_eq!(out, yaml("{resources: [a.yaml], namePrefix: p-}"));
        assert_eq!(flux(KustomizationSpec::default(), ""), yaml("{}"));
        let bad = BuildOptions::Flux(FluxBuild::default());
        assert!(edit_kustomization(&bad, "- a\n").is_err());
        assert!(edit_kustomization(&bad, "a: [\n").is_err());
    }

    #[test]
    fn flux_appends_patches_and_components() {
        let out = flux(
            KustomizationSpec {
                patches: vec![Patch {
                    patch: Some("- op: add\n  path: /x\n  value: 1\n".into()),
                    path: None,
                    target: Some(PatchTarget {
                        kind: Some("Deployment".into()),
                        label_selector: Some("app=web".into()),
                        ..Default::default()
                    }),
                }],
                components: vec!["../comp".into()],
                ..Default::default()
            },
            BASE,
        );
        assert_eq!(
            out["patches"],
            yaml(
                "- path: p.yaml\n- patch: \"- op: add\\n  path: /x\\n  value: 1\\n\"\n  target: {kind: Deployment, labelSelector: app=web}\n"
            )
        );
        assert_eq!(out["components"], yaml("[c1, ../comp]"));
        assert!(
            BuildOptions::flux(&KustomizationSpec {
                components: vec!["https://example.com/c".into()],
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            BuildOptions::flux(&KustomizationSpec {
                components: vec!["/abs".into()],
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn flux_images_replace_by_name_or_append() {
        let out = flux(
            KustomizationSpec {
                images: vec![
                    Image {
                        name: "nginx".into(),
                        new_name: Some("mirror/nginx".into()),
                        ..Default::default()
                    },
                    Image {
                        name: "busybox".into(),
                        digest: Some("sha256:abc".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            BASE,
        );
        // The whole entry is replaced: the overlay's newTag is gone.
        assert_eq!(
            out["images"],
            yaml(
                "- {name: nginx, newName: mirror/nginx}\n- {name: redis, newName: my/redis}\n- {name: busybox, digest: 'sha256:abc'}\n"
            )
        );
    }

    #[test]
    fn flux_generates_nothing_into_the_file_for_common_metadata() {
        let spec = KustomizationSpec {
            common_metadata: Some(CommonMetadata {
                labels: [("team".to_owned(), "a".to_owned())].into(),
                annotations: BTreeMap::new(),
            }),
            post_build: Some(PostBuild::default()),
            ..Default::default()
        };
        let out = flux(spec.clone(), BASE);
        assert_eq!(out, yaml(BASE));
        let mut objects = crate::render::parse_objects(
            b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  labels: {team: old, app: web}\nspec:\n  selector: {matchLabels: {app: web}}\n",
        )
        .unwrap();
        apply_common_metadata(
            &mut objects,
            &[("team".to_owned(), "a".to_owned())].into(),
            &[("note".to_owned(), "x".to_owned())].into(),
        );
        let d = objects.values().next().unwrap();
        assert_eq!(
            d["metadata"]["labels"],
            serde_json::json!({"team": "a", "app": "web"})
        );
        assert_eq!(
            d["metadata"]["annotations"],
            serde_json::json!({"note": "x"})
        );
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            serde_json::json!({"app": "web"})
        );
    }

    #[test]
    fn argo_edits_like_kustomize_edit() {
        let k = crate::argo::ArgoKustomize {
            name_prefix: Some("ap-".into()),
            name_suffix: Some("-as".into()),
            images: vec![
                "nginx=mirror/nginx:2.0".into(),
                "redis:7".into(),
                "busybox@sha256:def".into(),
            ],
            common_labels: [("env".to_owned(), "prod".to_owned())].into(),
            common_annotations: [("owner".to_owned(), "me".to_owned())].into(),
            namespace: Some("argo-ns".into()),
            patches: vec![Patch {
                path: Some("extra.yaml".into()),
                ..Default::default()
            }],
            components: vec!["c1".into(), "c2".into()],
            replicas: vec![crate::argo::Replica {
                name: "web".into(),
                count: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("3".into()),
                ),
            }],
            ..Default::default()
        };
        let out = argo(k, BASE).unwrap();
        assert_eq!(out["namePrefix"], "ap-");
        assert_eq!(out["nameSuffix"], "-as");
        assert_eq!(out["namespace"], "argo-ns");
        // `set image` replaces the entry: redis loses its newName.
        assert_eq!(
            out["images"],
            yaml(
                "- {name: nginx, newName: mirror/nginx, newTag: '2.0'}\n- {name: redis, newTag: '7'}\n- {name: busybox, digest: 'sha256:def'}\n"
            )
        );
        assert_eq!(out["replicas"], yaml("- {name: web, count: 3}"));
        assert_eq!(out["commonLabels"], yaml("{env: prod}"));
        assert_eq!(out["commonAnnotations"], yaml("{owner: me}"));
        assert_eq!(out["patches"], yaml("- path: p.yaml\n- path: extra.yaml\n"));
        assert_eq!(out["components"], yaml("[c1, c2]"));
    }

    #[test]
    fn argo_image_forms_and_preserved_fields() {
        let base = "images:\n- {name: nginx, newName: keep/nginx, newTag: '1'}\n";
        let out = argo(
            crate::argo::ArgoKustomize {
                images: vec!["nginx=*:2".into()],
                ..Default::default()
            },
            base,
        )
        .unwrap();
        assert_eq!(
            out["images"],
            yaml("- {name: nginx, newName: keep/nginx, newTag: '2'}")
        );
        assert_eq!(
            parse_image("reg:5000/app=reg:5000/other:v1@sha256:x").unwrap(),
            (
                "reg:5000/app".to_owned(),
                Some("reg:5000/other".to_owned()),
                Some("v1".to_owned()),
                Some("sha256:x".to_owned())
            )
        );
        assert_eq!(
            parse_image("reg:5000/app").unwrap(),
            ("reg:5000/app".to_owned(), None, None, None)
        );
        assert!(parse_image("a=b=c").is_err());
    }

    #[test]
    fn argo_labels_conflict_without_force() {
        let base = "commonLabels: {env: dev}\n";
        let k = crate::argo::ArgoKustomize {
            common_labels: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        };
        let err = argo(k.clone(), base).unwrap_err();
        assert!(
            err.contains("label env already in kustomization file"),
            "{err}"
        );
        let out = argo(
            crate::argo::ArgoKustomize {
                force_common_labels: true,
                ..k
            },
            base,
        )
        .unwrap();
        assert_eq!(out["commonLabels"], yaml("{env: prod}"));
    }

    #[test]
    fn argo_refuses_what_is_not_reproduced() {
        for k in [
            crate::argo::ArgoKustomize {
                label_without_selector: true,
                ..Default::default()
            },
            crate::argo::ArgoKustomize {
                version: Some("v4".into()),
                ..Default::default()
            },
            crate::argo::ArgoKustomize {
                images: vec!["app:${ARGOCD_APP_REVISION}".into()],
                ..Default::default()
            },
            crate::argo::ArgoKustomize {
                replicas: vec![crate::argo::Replica {
                    name: "x".into(),
                    count: Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                            "many".into(),
                        ),
                    ),
                }],
                ..Default::default()
            },
        ] {
            assert!(argo(k.clone(), BASE).is_err(), "{k:?}");
        }
        let multi = ApplicationSpec {
            sources: Some(vec![serde_json::json!({})]),
            ..Default::default()
        };
        assert!(BuildOptions::argo(&multi).is_err());
    }

    #[test]
    fn digests_are_stable_and_tell_options_apart() {
        let a = BuildOptions::flux(&KustomizationSpec {
            name_prefix: Some("p-".into()),
            ..Default::default()
        })
        .unwrap();
        let b = BuildOptions::flux(&KustomizationSpec {
            name_suffix: Some("p-".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.digest(), a.clone().digest());
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), BuildOptions::None.digest());
        // The same prefix from Argo CD builds differently.
        let c = BuildOptions::Argo(ArgoBuild {
            name_prefix: Some("p-".into()),
            ..Default::default()
        });
        assert_ne!(a.digest(), c.digest());
        // Destination namespace does not change the rendering.
        let d = BuildOptions::Argo(ArgoBuild {
            name_prefix: Some("p-".into()),
            destination_namespace: Some("x".into()),
            ..Default::default()
        });
        assert_eq!(c.digest(), d.digest());
        // Pinned: a change of the serialisation is a change of every key.
        assert_eq!(
            BuildOptions::None.digest().to_string(),
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"stale-guard build options v1\0\"None\""))
            )
        );
        let v1 = variables_digest(&[("a".to_owned(), "bc".to_owned())].into());
        let v2 = variables_digest(&[("ab".to_owned(), "c".to_owned())].into());
        assert_ne!(v1, v2);
    }

    #[test]
    fn prepare_replaces_a_linked_file_without_writing_through_it() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("base");
        let o = root.path().join("o");
        fs::create_dir_all(&base).unwrap();
        fs::create_dir_all(&o).unwrap();
        fs::write(base.join("kustomization.yaml"), "resources: [cm.yaml]\n").unwrap();
        std::os::unix::fs::symlink("../base/kustomization.yaml", o.join("kustomization.yaml"))
            .unwrap();
        let options = BuildOptions::Flux(FluxBuild {
            name_prefix: Some("x-".into()),
            ..Default::default()
        });
        prepare(&options, root.path(), &o).unwrap();
        assert_eq!(
            fs::read_to_string(base.join("kustomization.yaml")).unwrap(),
            "resources: [cm.yaml]\n"
        );
        let edited = yaml(&fs::read_to_string(o.join("kustomization.yaml")).unwrap());
        assert_eq!(edited, yaml("{resources: [cm.yaml], namePrefix: x-}"));
        assert!(
            !fs::symlink_metadata(o.join("kustomization.yaml"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn flux_generates_a_kustomization_when_there_is_none() {
        let root = tempfile::tempdir().unwrap();
        let o = root.path().join("o");
        for f in [
            "b.yaml",
            "a.yml",
            "notes.txt",
            "sub/c.yaml",
            "k/kustomization.yaml",
            "k/x.yaml",
        ] {
            let p = o.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "").unwrap();
        }
        let options = BuildOptions::Flux(FluxBuild::default());
        prepare(&options, root.path(), &o).unwrap();
        let made = yaml(&fs::read_to_string(o.join("kustomization.yaml")).unwrap());
        assert_eq!(
            made["resources"],
            yaml("[./a.yml, ./b.yaml, ./k, ./sub/c.yaml]")
        );
        // Argo CD does not build a directory without one.
        fs::remove_file(o.join("kustomization.yaml")).unwrap();
        let argo = BuildOptions::Argo(ArgoBuild::default());
        assert!(prepare(&argo, root.path(), &o).is_err());
    }

    #[test]
    fn component_paths_are_joined_to_the_overlay() {
        let argo = BuildOptions::Argo(ArgoBuild {
            components: vec![
                "../../components/a".into(),
                "local".into(),
                "../../components/a/".into(),
                "https://example.com/c.git".into(),
            ],
            ..Default::default()
        });
        assert_eq!(
            argo.component_paths("apps/prod").unwrap(),
            (
                vec!["components/a".to_owned(), "apps/prod/local".to_owned()],
                true
            )
        );
        let up = BuildOptions::Argo(ArgoBuild {
            components: vec!["../../..".into()],
            ..Default::default()
        });
        assert!(up.component_paths("apps/prod").is_err());
        let root = BuildOptions::Argo(ArgoBuild {
            components: vec!["c".into(), ".".into()],
            ..Default::default()
        });
        assert_eq!(
            root.component_paths(".").unwrap(),
            (vec!["c".to_owned(), ".".to_owned()], false)
        );
    }
}
