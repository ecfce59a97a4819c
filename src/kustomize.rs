//! What a kustomization file asks `kustomize build` to read.
//!
//! This module only parses: it turns the bytes of a kustomization (or of a
//! plugin config) into the list of local paths and remote references it
//! names. Resolving those paths against a git tree is `checksum`'s job.
//! The field list and path rules follow `kustomize-fields.md` (kustomize
//! v5.5): YAML is read like `sigs.k8s.io/yaml` reads it (first document only,
//! field names matched case-insensitively, a duplicated key keeps its last
//! value).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// File names `kustomize build` probes in every directory it visits.
pub const KUSTOMIZATION_FILE_NAMES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Largest YAML file we parse (kustomization or plugin config). Real ones are
/// a few KiB; the cap keeps a hostile repository from pinning a core.
pub const MAX_YAML_BYTES: usize = 16 << 20;

/// A YAML value, as JSON would see it after `sigs.k8s.io/yaml` conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Seq(Vec<Node>),
    /// Keys in document order, duplicates kept (see [`Node::field`]).
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value of `name` in a mapping, matched like Go's `encoding/json`
    /// decodes into a struct: case-insensitively. The YAML is converted to a
    /// JSON object first, which keeps the last of exact duplicates and sorts
    /// keys, so among spellings differing in case the greatest key wins.
    pub fn field(&self, name: &str) -> Option<&Node> {
        let Node::Map(entries) = self else {
            return None;
        };
        let mut best: Option<(&str, &Node)> = None;
        for (key, value) in entries {
            if key.eq_ignore_ascii_case(name) && best.is_none_or(|(k, _)| key.as_str() >= k) {
                best = Some((key, value));
            }
        }
        best.map(|(_, v)| v)
    }

    fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Number(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Node, Node>()? {
            // JSON object keys are strings; YAML scalars become their text.
            let key = match key {
                Node::String(s) | Node::Number(s) => s,
                Node::Bool(b) => b.to_string(),
                Node::Null => "null".to_owned(),
                Node::Seq(_) | Node::Map(_) => {
                    return Err(serde::de::Error::custom("mapping key is not a scalar"));
                }
            };
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// Parses the first YAML document of `bytes`; later documents are not read
/// (kustomize ignores them too). An empty input is [`Node::Null`].
pub fn first_document(bytes: &[u8]) -> Result<Node, String> {
    check_size(bytes)?;
    match serde_yaml_ng::Deserializer::from_slice(bytes).next() {
        None => Ok(Node::Null),
        Some(doc) => Node::deserialize(doc).map_err(|e| e.to_string()),
    }
}

/// Parses every YAML document of `bytes`.
pub fn all_documents(bytes: &[u8]) -> Result<Vec<Node>, String> {
    check_size(bytes)?;
    serde_yaml_ng::Deserializer::from_slice(bytes)
        .map(|doc| Node::deserialize(doc).map_err(|e| e.to_string()))
        .collect()
}

fn check_size(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_YAML_BYTES {
        return Err(format!(
            "file is {} bytes, larger than the {} bytes a kustomization may have",
            bytes.len(),
            MAX_YAML_BYTES
        ));
    }
    Ok(())
}

/// True when an entry of `patchesStrategicMerge`, `generators`,
/// `transformers` or `validators` is inline YAML rather than a path:
/// kustomize first tries to read the string itself as resources.
pub fn is_inline_yaml(entry: &str) -> bool {
    match all_documents(entry.as_bytes()) {
        Ok(docs) => {
            let mut docs = docs.iter().filter(|d| !d.is_null()).peekable();
            docs.peek().is_some() && docs.all(|d| matches!(d, Node::Map(_)))
        }
        Err(_) => false,
    }
}

/// A directory reference (resources, components, plugin directories) that
/// kustomize would clone instead of reading locally.
pub fn is_remote_dir(reference: &str) -> bool {
    let r = reference.strip_prefix("git::").unwrap_or(reference);
    if ["ssh://", "https://", "http://", "file://"]
        .iter()
        .any(|scheme| has_scheme(r, scheme))
    {
        return true;
    }
    if r.starts_with("github.com/") || r.starts_with("github.com:") {
        return true;
    }
    // scp-like `user@host:path`: ^[A-Za-z][A-Za-z0-9-]*@
    let mut chars = r.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {}
        _ => return false,
    }
    for c in chars {
        if c == '@' {
            return true;
        }
        if !(c.is_ascii_alphanumeric() || c == '-') {
            return false;
        }
    }
    false
}

/// A file reference kustomize would fetch over HTTP.
pub fn is_remote_file(reference: &str) -> bool {
    has_scheme(reference, "http://") || has_scheme(reference, "https://")
}

/// URL schemes are case-insensitive (RFC 3986), and kustomize reads them
/// so: `HTTPS://host/x.yaml` is fetched, not looked up as a local path.
fn has_scheme(reference: &str, scheme: &str) -> bool {
    reference
        .get(..scheme.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
}

/// How a referenced path must resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// A file, or else a kustomization directory (`resources`).
    FileOrKustomization,
    /// A kustomization directory (`components`).
    Kustomization,
    /// A regular file.
    File,
    /// A plugin config: inline YAML was split off already; this is a file of
    /// configs or a kustomization directory producing them.
    PluginConfig,
}

/// One local path or remote reference named by a kustomization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The field that named it, for error messages (`resources`, `patches[2].path`).
    pub field: String,
    pub kind: RefKind,
    /// The path or reference exactly as written.
    pub path: String,
}

/// A `helmCharts` entry (or legacy `helmChartInflationGenerator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmChart {
    pub field: String,
    pub name: String,
    pub version: String,
    pub repo: String,
    /// `helmGlobals.chartHome`, default `charts`.
    pub chart_home: String,
}

impl HelmChart {
    /// Where kustomize looks for the chart, relative to the kustomization.
    pub fn chart_dir(&self) -> String {
        if !self.version.is_empty() && !self.repo.is_empty() {
            format!(
                "{}/{}-{}/{}",
                self.chart_home, self.name, self.version, self.name
            )
        } else {
            format!("{}/{}", self.chart_home, self.name)
        }
    }

    /// The `remote:` name of a chart pull: `<repo>/<name>[@<version>]`.
    /// Trailing slashes of the repo are dropped (helm pulls the same chart
    /// either way), so `repo: https://h/charts/` names the entry
    /// `remote:https://h/charts/<name>`. Only called with a repo: kustomize
    /// pulls nothing without one.
    pub fn remote_ref(&self) -> String {
        let mut r = format!("{}/{}", self.repo.trim_end_matches('/'), self.name);
        if !self.version.is_empty() {
            r.push('@');
            r.push_str(&self.version);
        }
        r
    }
}

/// A `generators` / `transformers` / `validators` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginEntry {
    /// Config YAML written in the kustomization itself.
    Inline { field: String, text: String },
    /// A file of configs, or a kustomization directory producing them.
    Path(Reference),
}

/// Everything a kustomization (or a builtin plugin config) asks kustomize to
/// read, in field order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub refs: Vec<Reference>,
    /// References that are remote: recorded, never fetched.
    pub remotes: Vec<String>,
    pub helm_charts: Vec<HelmChart>,
    /// `helmGlobals.configHome` values.
    pub helm_config_homes: Vec<String>,
    pub plugins: Vec<PluginEntry>,
}

/// An error in the shape of a kustomization (the YAML parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

type Shape<T> = Result<T, ShapeError>;

fn shape<T>(msg: String) -> Shape<T> {
    Err(ShapeError(msg))
}

fn string_of(node: &Node, field: &str) -> Shape<Option<String>> {
    match node {
        Node::Null => Ok(None),
        Node::String(s) => Ok(Some(s.clone())),
        other => shape(format!(
            "{field}: expected a string, found {}",
            kind_of(other)
        )),
    }
}

fn kind_of(node: &Node) -> &'static str {
    match node {
        Node::Null => "null",
        Node::Bool(_) => "a boolean",
        Node::Number(_) => "a number",
        Node::String(_) => "a string",
        Node::Seq(_) => "a list",
        Node::Map(_) => "a mapping",
    }
}

fn opt_string(parent: &Node, name: &str, field: &str) -> Shape<Option<String>> {
    match parent.field(name) {
        None => Ok(None),
        Some(n) => string_of(n, field),
    }
}

/// The items of a list field (absent or null: none).
fn list<'a>(parent: &'a Node, name: &str, field: &str) -> Shape<&'a [Node]> {
    match parent.field(name) {
        None | Some(Node::Null) => Ok(&[]),
        Some(Node::Seq(items)) => Ok(items),
        Some(other) => shape(format!(
            "{field}: expected a list, found {}",
            kind_of(other)
        )),
    }
}

fn string_list(parent: &Node, name: &str, field: &str) -> Shape<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, item) in list(parent, name, field)?.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(s) = string_of(item, &f)? {
            out.push((f, s));
        }
    }
    Ok(out)
}

fn object<'a>(node: &'a Node, field: &str) -> Shape<&'a Node> {
    match node {
        Node::Map(_) | Node::Null => Ok(node),
        other => shape(format!(
            "{field}: expected a mapping, found {}",
            kind_of(other)
        )),
    }
}

impl Inputs {
    fn push(&mut self, field: String, kind: RefKind, path: String) {
        let remote = match kind {
            RefKind::FileOrKustomization => is_remote_dir(&path) || is_remote_file(&path),
            RefKind::Kustomization | RefKind::PluginConfig => is_remote_dir(&path),
            RefKind::File => is_remote_file(&path),
        };
        if remote {
            self.remotes.push(path);
        } else {
            self.refs.push(Reference { field, kind, path });
        }
    }

    fn files(&mut self, entries: Vec<(String, String)>) {
        for (field, path) in entries {
            self.push(field, RefKind::File, path);
        }
    }

    /// `files`, `envs` and `env` of a configMap/secret generator, in a
    /// kustomization entry or a builtin generator config.
    fn generator(&mut self, gen_node: &Node, field: &str) -> Shape<()> {
        for (f, source) in string_list(gen_node, "files", &format!("{field}.files"))? {
            self.push(f.clone(), RefKind::File, file_source_path(&source, &f)?);
        }
        self.files(string_list(gen_node, "envs", &format!("{field}.envs"))?);
        if let Some(env) = opt_string(gen_node, "env", &format!("{field}.env"))?
            && !env.is_empty()
        {
            self.push(format!("{field}.env"), RefKind::File, env);
        }
        Ok(())
    }

    /// A helm chart entry plus the globals that locate it.
    fn helm_chart(&mut self, chart: &Node, globals: &Node, field: &str) -> Shape<()> {
        let name = opt_string(chart, "name", &format!("{field}.name"))?.unwrap_or_default();
        let chart_home = opt_string(globals, "chartHome", "helmGlobals.chartHome")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "charts".to_owned());
        if let Some(values) = opt_string(chart, "valuesFile", &format!("{field}.valuesFile"))?
            && !values.is_empty()
        {
            self.push(format!("{field}.valuesFile"), RefKind::File, values);
        }
        let extra = format!("{field}.additionalValuesFiles");
        self.files(string_list(chart, "additionalValuesFiles", &extra)?);
        // kustomize's HelmChartInflationGenerator refuses a chart without
        // a name before anything else.
        if name.is_empty() {
            return shape(format!("{field}.name: chart name cannot be empty"));
        }
        self.helm_charts.push(HelmChart {
            field: field.to_owned(),
            version: opt_string(chart, "version", &format!("{field}.version"))?.unwrap_or_default(),
            repo: opt_string(chart, "repo", &format!("{field}.repo"))?.unwrap_or_default(),
            name,
            chart_home,
        });
        Ok(())
    }

    fn helm_config_home(&mut self, globals: &Node) -> Shape<()> {
        if let Some(home) = opt_string(globals, "configHome", "helmGlobals.configHome")?
            && !home.is_empty()
        {
            self.helm_config_homes.push(home);
        }
        Ok(())
    }

    /// Paths inside a builtin plugin config (`apiVersion: builtin`); they
    /// resolve against the kustomization that lists the plugin.
    pub fn builtin_plugin(&mut self, config: &Node, kind: &str) -> Shape<()> {
        let field = format!("builtin {kind}");
        match kind {
            "PatchTransformer" | "PatchJson6902Transformer" => {
                if let Some(path) = opt_string(config, "path", &format!("{field}.path"))?
                    && !path.is_empty()
                {
                    self.push(format!("{field}.path"), RefKind::File, path);
                }
            }
            "PatchStrategicMergeTransformer" => {
                for (f, entry) in string_list(config, "paths", &format!("{field}.paths"))? {
                    if !is_inline_yaml(&entry) {
                        self.push(f, RefKind::File, entry);
                    }
                }
            }
            "ReplacementTransformer" => self.replacements(config, &field)?,
            "ConfigMapGenerator" | "SecretGenerator" => self.generator(config, &field)?,
            "HelmChartInflationGenerator" => {
                self.helm_chart(config, config, &field)?;
                self.helm_config_home(config)?;
            }
            "ValueAddTransformer" => {
                let f = format!("{field}.targetFilePath");
                if let Some(path) = opt_string(config, "targetFilePath", &f)?
                    && !path.is_empty()
                {
                    // kustomize loads it while configuring the plugin:
                    // a missing file fails the build.
                    self.push(f, RefKind::File, path);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `replacements[].path` of a kustomization (`prefix` empty) or of a
    /// builtin `ReplacementTransformer` config.
    fn replacements(&mut self, parent: &Node, prefix: &str) -> Shape<()> {
        let field = if prefix.is_empty() {
            "replacements".to_owned()
        } else {
            format!("{prefix}.replacements")
        };
        for (i, item) in list(parent, "replacements", &field)?.iter().enumerate() {
            let f = format!("{field}[{i}]");
            let item = object(item, &f)?;
            if let Some(path) = opt_string(item, "path", &format!("{f}.path"))?
                && !path.is_empty()
            {
                self.push(format!("{f}.path"), RefKind::File, path);
            }
        }
        Ok(())
    }
}

/// The path of a generator `files` entry, `[key=]path` (kustomize's
/// `ParseFileSource`).
fn file_source_path(source: &str, field: &str) -> Shape<String> {
    match source.matches('=').count() {
        0 => Ok(source.to_owned()),
        1 if source.starts_with('=') || source.ends_with('=') => {
            shape(format!("{field}: {source:?} has an empty key or path"))
        }
        1 => Ok(source
            .split_once('=')
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default()),
        _ => shape(format!(
            "{field}: {source:?}: key names or file paths cannot contain '='"
        )),
    }
}

/// Reads the inputs of a parsed kustomization document.
/// kustomize's words for a kustomization with nothing to build.
const EMPTY: &str = "kustomization is empty: kustomize refuses to build it";

/// kustomize's `CheckEmpty`: after `FixKustomization`, every field but
/// `apiVersion`, `kind` and `metadata` holds its zero value. A null or an
/// empty string is zero; an empty list or mapping is not (Go decodes it to a
/// non-nil value), except for the deprecated lists that `FixKustomization`
/// appends to another field and then drops (`append(nil, empty...)` is nil).
fn is_empty_kustomization(root: &Node) -> bool {
    let Node::Map(fields) = root else {
        return false;
    };
    fields
        .iter()
        .all(|(key, value)| match (key.as_str(), value) {
            ("apiVersion" | "kind" | "metadata", _) => true,
            (_, Node::Null) => true,
            (_, Node::String(s)) => s.is_empty(),
            ("bases" | "imageTags" | "helmChartInflationGenerator", Node::Seq(items)) => {
                items.is_empty()
            }
            _ => false,
        })
}

pub fn kustomization_inputs(doc: &Node) -> Shape<Inputs> {
    let root = match doc {
        Node::Map(_) => doc,
        Node::Null => return shape(EMPTY.to_owned()),
        other => return shape(format!("expected a mapping, found {}", kind_of(other))),
    };
    if is_empty_kustomization(root) {
        return shape(EMPTY.to_owned());
    }
    let mut inputs = Inputs::default();

    // `bases` is appended after `resources`, as kustomize does.
    for name in ["resources", "bases"] {
        for (f, path) in string_list(root, name, name)? {
            inputs.push(f, RefKind::FileOrKustomization, path);
        }
    }
    for (f, path) in string_list(root, "components", "components")? {
        inputs.push(f, RefKind::Kustomization, path);
    }
    for name in ["crds", "configurations"] {
        inputs.files(string_list(root, name, name)?);
    }
    if let Some(openapi) = root.field("openapi") {
        let openapi = object(openapi, "openapi")?;
        if let Some(path) = opt_string(openapi, "path", "openapi.path")?
            && !path.is_empty()
        {
            inputs.push("openapi.path".to_owned(), RefKind::File, path);
        }
    }
    for name in ["patches", "patchesJson6902"] {
        for (i, item) in list(root, name, name)?.iter().enumerate() {
            let f = format!("{name}[{i}]");
            let item = object(item, &f)?;
            if let Some(path) = opt_string(item, "path", &format!("{f}.path"))?
                && !path.is_empty()
            {
                inputs.push(format!("{f}.path"), RefKind::File, path);
            }
        }
    }
    for (f, entry) in string_list(root, "patchesStrategicMerge", "patchesStrategicMerge")? {
        if !is_inline_yaml(&entry) {
            inputs.push(f, RefKind::File, entry);
        }
    }
    inputs.replacements(root, "")?;
    for name in ["configMapGenerator", "secretGenerator"] {
        for (i, item) in list(root, name, name)?.iter().enumerate() {
            let f = format!("{name}[{i}]");
            inputs.generator(object(item, &f)?, &f)?;
        }
    }

    let globals = helm_globals(root)?;
    for (i, item) in list(root, "helmCharts", "helmCharts")?.iter().enumerate() {
        let f = format!("helmCharts[{i}]");
        inputs.helm_chart(object(item, &f)?, &globals, &f)?;
    }
    legacy_helm(root, &globals, &mut inputs)?;
    inputs.helm_config_home(&globals)?;

    for name in ["generators", "transformers", "validators"] {
        for (f, entry) in string_list(root, name, name)? {
            if is_inline_yaml(&entry) {
                inputs.plugins.push(PluginEntry::Inline {
                    field: f,
                    text: entry,
                });
            } else if is_remote_dir(&entry) {
                inputs.remotes.push(entry);
            } else {
                inputs.plugins.push(PluginEntry::Path(Reference {
                    field: f,
                    kind: RefKind::PluginConfig,
                    path: entry,
                }));
            }
        }
    }
    Ok(inputs)
}

/// The homes every chart of a kustomization uses, as kustomize's
/// `FixKustomization` sets them: `helmGlobals` when the field is given
/// (even empty), else the last non-empty `chartHome` and `helmHome` of
/// the legacy `helmChartInflationGenerator` entries, which then apply to
/// the `helmCharts` entries too.
fn helm_globals(root: &Node) -> Shape<Node> {
    if let Some(g) = root.field("helmGlobals")
        && *g != Node::Null
    {
        return Ok(object(g, "helmGlobals")?.clone());
    }
    let name = "helmChartInflationGenerator";
    let (mut chart_home, mut config_home) = (None, None);
    for (i, item) in list(root, name, name)?.iter().enumerate() {
        let f = format!("{name}[{i}]");
        let item = object(item, &f)?;
        for (key, slot) in [
            ("chartHome", &mut chart_home),
            ("helmHome", &mut config_home),
        ] {
            if let Some(v) = opt_string(item, key, &format!("{f}.{key}"))?
                && !v.is_empty()
            {
                *slot = Some(v);
            }
        }
    }
    let mut homes = Vec::new();
    for (key, value) in [("chartHome", chart_home), ("configHome", config_home)] {
        if let Some(v) = value {
            homes.push((key.to_owned(), Node::String(v)));
        }
    }
    Ok(Node::Map(homes))
}

/// The deprecated `helmChartInflationGenerator` field: kustomize appends
/// its entries to `helmCharts`, located by the same globals.
fn legacy_helm(root: &Node, globals: &Node, inputs: &mut Inputs) -> Shape<()> {
    let name = "helmChartInflationGenerator";
    for (i, item) in list(root, name, name)?.iter().enumerate() {
        let f = format!("{name}[{i}]");
        let item = object(item, &f)?;
        let get = |key: &str| opt_string(item, key, &format!("{f}.{key}"));
        let mut chart = Vec::new();
        for (legacy, modern) in [
            ("chartName", "name"),
            ("chartVersion", "version"),
            ("chartRepoURL", "repo"),
            ("values", "valuesFile"),
        ] {
            if let Some(v) = get(legacy)? {
                chart.push((modern.to_owned(), Node::String(v)));
            }
        }
        inputs.helm_chart(&Node::Map(chart), globals, &f)?;
    }
    Ok(())
}

/// `apiVersion` and `kind` of a plugin config document.
pub fn plugin_identity(doc: &Node) -> (Option<&str>, Option<&str>) {
    let text = |name| match doc.field(name) {
        Some(Node::String(s)) => Some(s.as_str()),
        _ => None,
    };
    (text("apiVersion"), text("kind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(yaml: &str) -> Inputs {
        kustomization_inputs(&first_document(yaml.as_bytes()).unwrap()).unwrap()
    }

    fn paths(i: &Inputs) -> Vec<&str> {
        i.refs.iter().map(|r| r.path.as_str()).collect()
    }

    #[test]
    fn resources_then_bases_and_every_file_field() {
        let i = inputs(
            r#"
bases: [b1]
resources: [r1, https://example.com/x.yaml, github.com/org/repo//dir?ref=v1]
components: [c1]
crds: [crd.yaml]
configurations: [conf.yaml]
openapi: {path: schema.json}
patches:
  - path: p1.yaml
  - patch: |-
      inline
patchesJson6902: [{path: j.yaml, target: {kind: X}}]
patchesStrategicMerge:
  - psm.yaml
  - |-
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: x}
replacements: [{path: repl.yaml}, {source: {kind: X}}]
configMapGenerator:
  - name: a
    files: [k=f1.txt, f2.txt]
    envs: [e1.env]
    env: e2.env
    literals: [a=b]
secretGenerator: [{name: s, files: [s.txt]}]
"#,
        );
        assert_eq!(
            paths(&i),
            [
                "r1",
                "b1",
                "c1",
                "crd.yaml",
                "conf.yaml",
                "schema.json",
                "p1.yaml",
                "j.yaml",
                "psm.yaml",
                "repl.yaml",
                "f1.txt",
                "f2.txt",
                "e1.env",
                "e2.env",
                "s.txt"
            ]
        );
        assert_eq!(
            i.remotes,
            [
                "https://example.com/x.yaml",
                "github.com/org/repo//dir?ref=v1"
            ]
        );
        assert_eq!(i.refs[9].field, "replacements[0].path");
        assert_eq!(i.refs[10].field, "configMapGenerator[0].files[0]");
    }

    #[test]
    fn field_names_are_case_insensitive_and_last_duplicate_wins() {
        let i = inputs("Resources: [a]\nresources: [b]\n");
        assert_eq!(paths(&i), ["b"]);
        let i = inputs("resources: [a]\nresources: [b]\n");
        assert_eq!(paths(&i), ["b"]);
    }

    #[test]
    fn only_the_first_document_counts() {
        let i = inputs("resources: [a]\n---\nresources: [b]\n---\n: : [\n");
        assert_eq!(paths(&i), ["a"]);
    }

    #[test]
    fn empty_kustomizations_are_refused_as_kustomize_does() {
        for text in [
            "",
            "# only a comment\n",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
            "kind: Component\nmetadata: {name: x}\n",
            "resources:\nnamePrefix: ''\n",
            "bases: []\nimageTags: []\n",
        ] {
            let doc = first_document(text.as_bytes()).unwrap();
            let err = kustomization_inputs(&doc).unwrap_err();
            assert!(
                err.0.contains("kustomization is empty"),
                "{text:?}: {err:?}"
            );
        }
        for text in [
            "resources: []\n",
            "namePrefix: a-\n",
            "generatorOptions: {}\n",
        ] {
            let doc = first_document(text.as_bytes()).unwrap();
            assert!(kustomization_inputs(&doc).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        let doc = first_document(b"resources: [1]\n").unwrap();
        let err = kustomization_inputs(&doc).unwrap_err();
        assert!(err.0.contains("resources[0]"), "{err:?}");
        let doc = first_document(b"configMapGenerator: [{files: [a=b=c]}]").unwrap();
        let err = kustomization_inputs(&doc).unwrap_err();
        assert!(err.0.contains("cannot contain '='"), "{err:?}");
        assert!(first_document(b"resources: [a\n").is_err());
        assert!(kustomization_inputs(&first_document(b"- a\n").unwrap()).is_err());
    }

    #[test]
    fn remote_directory_rules() {
        for remote in [
            "git::https://x/y",
            "ssh://git@h/r",
            "file:///tmp/r",
            "git@github.com:org/repo",
            "github.com/org/repo",
            "github.com:org/repo",
            "http://h/r",
            "HTTPS://h/r",
            "Ssh://git@h/r",
            "git::HTTP://x/y",
        ] {
            assert!(is_remote_dir(remote), "{remote}");
        }
        for remote in ["https://h/x.yaml", "HTTPS://h/x.yaml", "Http://h/x.yaml"] {
            assert!(is_remote_file(remote), "{remote}");
        }
        for local in ["https/x.yaml", "httpsx://h", "ht"] {
            assert!(!is_remote_file(local), "{local}");
        }
        for local in [
            "../base",
            "gitlab.com/x/y",
            "1user@host:x",
            "bases/app",
            "a_b@c",
        ] {
            assert!(!is_remote_dir(local), "{local}");
        }
    }

    #[test]
    fn helm_charts_locate_their_directory() {
        let i = inputs(
            r#"
helmGlobals: {chartHome: vendor, configHome: helmcfg}
helmCharts:
  - {name: app, valuesFile: v.yaml, additionalValuesFiles: [v2.yaml]}
  - {name: db, version: 1.2.3, repo: https://charts.example.com}
"#,
        );
        assert_eq!(i.helm_charts[0].chart_dir(), "vendor/app");
        assert_eq!(i.helm_charts[1].chart_dir(), "vendor/db-1.2.3/db");
        assert_eq!(
            i.helm_charts[1].remote_ref(),
            "https://charts.example.com/db@1.2.3"
        );
        assert_eq!(i.helm_config_homes, ["helmcfg"]);
        assert_eq!(paths(&i), ["v.yaml", "v2.yaml"]);
        let legacy = inputs("helmChartInflationGenerator: [{chartName: x, values: vals.yaml}]");
        assert_eq!(legacy.helm_charts[0].chart_dir(), "charts/x");
        let empty = first_document(b"helmCharts: [{name: '', repo: https://h}]").unwrap();
        let err = kustomization_inputs(&empty).unwrap_err();
        assert!(
            err.0
                .contains("helmCharts[0].name: chart name cannot be empty"),
            "{err:?}"
        );
        let slash = inputs("helmCharts: [{name: r, repo: https://h/stable//, version: '1'}]");
        assert_eq!(slash.helm_charts[0].remote_ref(), "https://h/stable/r@1");
        assert_eq!(paths(&legacy), ["vals.yaml"]);
        // kustomize's FixKustomization: an explicit helmGlobals wins over
        // the legacy homes, for every chart ...
        let legacy = inputs(
            "helmGlobals: {chartHome: ../home}\nhelmChartInflationGenerator: [{chartName: api}, {chartName: b, chartHome: own}]",
        );
        assert_eq!(legacy.helm_charts[0].chart_dir(), "../home/api");
        assert_eq!(legacy.helm_charts[1].chart_dir(), "../home/b");
        // ... and without it the last non-empty legacy home applies to
        // every chart, the modern entries included.
        let legacy = inputs(
            "helmCharts: [{name: m}]\nhelmChartInflationGenerator: [{chartName: a, chartHome: one, helmHome: cfg}, {chartName: b, chartHome: two}, {chartName: c, chartHome: ''}]",
        );
        let dirs: Vec<String> = legacy
            .helm_charts
            .iter()
            .map(HelmChart::chart_dir)
            .collect();
        assert_eq!(dirs, ["two/m", "two/a", "two/b", "two/c"]);
        assert_eq!(legacy.helm_config_homes, ["cfg"]);
        let empty_globals = inputs(
            "helmGlobals: {}\nhelmChartInflationGenerator: [{chartName: a, chartHome: one}]",
        );
        assert_eq!(empty_globals.helm_charts[0].chart_dir(), "charts/a");
    }

    #[test]
    fn plugin_entries_are_inline_or_paths() {
        let i = inputs(
            r#"
generators:
  - gen.yaml
  - |
    apiVersion: builtin
    kind: ConfigMapGenerator
    metadata: {name: x}
transformers: [dir/]
validators: ["https://github.com/org/repo"]
"#,
        );
        assert!(matches!(&i.plugins[0], PluginEntry::Path(r) if r.path == "gen.yaml"));
        assert!(matches!(&i.plugins[1], PluginEntry::Inline { .. }));
        assert!(matches!(&i.plugins[2], PluginEntry::Path(r) if r.path == "dir/"));
        assert_eq!(i.remotes, ["https://github.com/org/repo"]);
    }

    #[test]
    fn builtin_plugin_paths() {
        let mut i = Inputs::default();
        let doc = first_document(b"paths: [a.yaml, 'kind: X']\n").unwrap();
        i.builtin_plugin(&doc, "PatchStrategicMergeTransformer")
            .unwrap();
        let doc = first_document(b"files: [f.txt]\nenvs: [e.env]\n").unwrap();
        i.builtin_plugin(&doc, "SecretGenerator").unwrap();
        let doc = first_document(b"path: p.yaml\n").unwrap();
        i.builtin_plugin(&doc, "PatchTransformer").unwrap();
        let doc = first_document(b"replacements: [{path: r.yaml}]\n").unwrap();
        i.builtin_plugin(&doc, "ReplacementTransformer").unwrap();
        assert_eq!(paths(&i), ["a.yaml", "f.txt", "e.env", "p.yaml", "r.yaml"]);
    }
}
