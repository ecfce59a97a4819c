//! Content verification (contract section 8): an admitted object compared
//! with the object of the same identity in the rendering of head.
//!
//! Everything here is pure: no I/O, so the webhook (`server`), the CI check
//! (`verify --content`) and the fuzz targets judge with the same code.
//!
//! # Comparison
//!
//! [`compare`] holds the rendering to be a subset of the object: every field
//! the rendering sets must be in the object with an equal value; fields only
//! the object has (server defaults, `status`, `metadata.uid`, labels other
//! tools add, fields of mutating webhooks) are ignored.
//!
//! - `apiVersion` is compared first: fields are compared only in the same
//!   version, so another version is a [`Difference`] at `apiVersion` that
//!   says so.
//! - Maps compare key by key, recursively. `null` in the rendering sets
//!   nothing; so does a map or list that holds nothing but such values
//!   (`resources: {}`, `args: []`), which then matches an object that lacks
//!   the field (the API server drops empty fields). The top-level `status`
//!   of the rendering is ignored.
//! - Scalars: numbers compare by value (`1` equals `1.0`), a number never
//!   equals a string (`1` is not `"1"`), strings compare exactly (`"1.10"`
//!   is not `"1.1"`), except at quantity fields (below).
//!
//! - Lists of maps: each rendered element must match a different object
//!   element, in any order (an injected sidecar container does not break
//!   the match). Pairs are guessed first (the first free object element of
//!   the same `name`, for containers, env, volumes, ports, volumeMounts;
//!   an unnamed element the one at its index), then found by augmenting
//!   paths (Kuhn's algorithm) for what the guess left. A named element
//!   only matches object elements of its `name`, so named lists cost one
//!   comparison per element. At most [`MAX_ELEMENT_COMPARISONS`] element
//!   comparisons are made; beyond, the list is "too large to compare".
//! - Any other list (scalars, lists, a mix) compares element by element,
//!   in order, and must be as long as the object's. An empty rendered list
//!   matches an empty list or a list of maps.
//!
//! - A Secret (core group): each rendered `stringData` entry compares with
//!   the object's `stringData` entry if it has one, else with its
//!   base64-decoded `data` entry (the API server folds `stringData` into
//!   `data`, and a `stringData` entry overrides the `data` one of the same
//!   key, which is then not compared); rendered `data` entries compare with
//!   the object's by decoded bytes. A difference there shows the sizes of
//!   the values, never the values.
//!
//! # Quantities
//!
//! Where the Kubernetes schema types a field as `resource.Quantity`, the
//! API server canonicalises it (`0.5` is kept as `500m`, `1024Mi` as
//! `1Gi`), so there values (strings or numbers) compare by quantity, parsed
//! exactly by [`parse_quantity`]; a value that does not parse compares as
//! text. The fields, by kind (built-in kinds only: the API server keeps a
//! custom resource's fields as applied, so they compare exactly):
//!
//! - in a pod spec (Pod `spec`, PodTemplate `template.spec`, `spec.template.spec` of
//!   ReplicationController, Deployment, ReplicaSet, DaemonSet (`apps` or
//!   `extensions`), StatefulSet, Job, and CronJob
//!   `spec.jobTemplate.spec.template.spec`): every value under
//!   `{containers,initContainers,ephemeralContainers}[].resources.{requests,limits}`
//!   and the pod-level `resources.{requests,limits}`, `overhead`,
//!   `volumes[].emptyDir.sizeLimit`, and
//!   `volumes[].ephemeral.volumeClaimTemplate.spec.resources.{requests,limits}`
//!   (`resources.claims` holds names, not quantities);
//! - PersistentVolumeClaim `spec.resources.{requests,limits}`, and the same
//!   in StatefulSet `spec.volumeClaimTemplates[].spec`;
//! - PersistentVolume `spec.capacity`; ResourceQuota `spec.hard`;
//!   LimitRange `spec.limits[].{max,min,default,defaultRequest,maxLimitRequestRatio}`;
//! - HorizontalPodAutoscaler (`autoscaling`)
//!   `spec.metrics[].{resource,containerResource,pods,object,external}.target.{value,averageValue}`;
//! - CSIStorageCapacity (`storage.k8s.io`) `capacity`, `maximumVolumeSize`.
//!
//! # Paths
//!
//! A [`Difference`] names the first differing field (rendered keys in
//! sorted order) as a path: keys that are plain identifiers (a letter or
//! `_`, then letters, digits, `_` or `-`) joined by `.`, other keys quoted
//! (`metadata.annotations["fluxcd.io/checksum"]`); list elements by their
//! index in the object's list (`env[1]`), as `kubectl get -o yaml` shows it.
//! A rendered element that fails to match is reported against the object
//! element of the same `name` (an unnamed one: of the same index), at the
//! deepest field where they differ; one the object lacks altogether is
//! named `env[name=FOO]`, or, unnamed, by its index in the rendering.
//!
//! # Bounds
//!
//! Nesting deeper than [`MAX_DEPTH`] levels, and more than [`MAX_STEPS`]
//! values visited, end the comparison with a [`Difference`] saying so,
//! never a stack overflow or unbounded work.

use std::collections::HashMap;
use std::fmt;

mod envelope;
mod fast;
mod pruned;
mod seen;
#[cfg(test)]
mod test_review;
pub use fast::review_contains;
pub(crate) use fast::{MetaSeed, ObjectSeed};
pub use pruned::review_object;
pub use seen::Seen;

use serde_json::{Map, Number, Value};

use crate::echo;

/// Levels of nesting compared; deeper is a [`Difference`].
pub const MAX_DEPTH: usize = 256;
/// Values visited by one [`compare`]; more is a [`Difference`] (the object
/// is too large to compare), so that no request costs unbounded work.
pub const MAX_STEPS: usize = 4_000_000;

/// Who an object is: API group (from `apiVersion`), kind, namespace, name.
/// A rendered namespaced object without a namespace has `namespace: None`
/// and matches the request's namespace (see [`Identity::lookup_keys`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// `""` for the core group (`apiVersion: v1`).
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Identity {
    /// The identity of a rendered or admitted object, `None` when it lacks
    /// `apiVersion`, `kind` or `metadata.name` (strings, non-empty).
    pub fn of(object: &Value) -> Option<Identity> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        let metadata = object.get("metadata")?;
        let name = metadata.get("name")?.as_str()?;
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            return None;
        }
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned);
        Some(Identity {
            group: group_of(api_version).to_owned(),
            kind: kind.to_owned(),
            namespace,
            name: name.to_owned(),
        })
    }

    /// The keys under which a rendering may hold the object a request
    /// names, in the order to try: the exact namespace first, then the
    /// rendered object without one (it takes the request's namespace).
    pub fn lookup_keys(&self) -> impl Iterator<Item = Identity> + '_ {
        let bare = self.namespace.as_ref().map(|_| Identity {
            namespace: None,
            ..self.clone()
        });
        std::iter::once(self.clone()).chain(bare)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)?;
        } else {
            write!(f, "{}.{}", self.kind, self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

/// The group part of an `apiVersion` (`apps/v1` -> `apps`, `v1` -> ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// The first field where the object differs from the rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `spec.rules[0].http.paths[0].backend.service.name`; keys that are not
    /// plain identifiers are quoted like
    /// `metadata.annotations["fluxcd.io/checksum"]` (module docs).
    pub path: String,
    /// The object's value at `path` as compact JSON, cut with
    /// [`crate::echo`]; `None` when the object lacks the field. A Secret's
    /// value is never shown: `(N bytes, not shown)` instead.
    pub found: Option<String>,
    /// The rendered value at `path`, compact JSON, cut (or hidden) the
    /// same way.
    pub rendered: String,
    /// Why, when the values alone do not say it (another `apiVersion`, a
    /// list too large to compare, a Secret's hidden values).
    pub note: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            Some(found) => write!(
                f,
                "{}: found {found}, head renders {}",
                self.path, self.rendered
            )?,
            None => write!(f, "{}: missing, head renders {}", self.path, self.rendered)?,
        }
        if let Some(note) = &self.note {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// Compares an admitted `object` with the `rendered` object of the same
/// identity (module docs): `Ok` when the rendering is a subset of it, else
/// the first field where they differ.
pub fn compare(rendered: &Value, object: &Value) -> Result<(), Difference> {
    // The review path hands over the rendering itself when the object was
    // seen to contain it (`review_contains`). A value matches itself; the
    // size guards below exist to bound work, and there is none to do.
    if std::ptr::eq(rendered, object) {
        return Ok(());
    }
    Comparer::new(rendered)
        .root(rendered, object)
        .map_err(|miss| miss.difference())
}

/// Whether `object` matches `rendered`: `compare(..).is_ok()`.
pub fn matches(rendered: &Value, object: &Value) -> bool {
    compare(rendered, object).is_ok()
}

/// One step of a path.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    /// An index into the object's list (or the rendering's, where the
    /// object's list is shorter).
    Index(usize),
    /// A rendered element the object lacks, by its `name`.
    Named(&'a str),
}

/// A value as a [`Difference`] shows it.
#[derive(Debug, Clone, Copy)]
enum Shown<'a> {
    Missing,
    Value(&'a Value),
    /// Said in words, not quoted (a value too deep to write).
    Text(&'static str),
    /// A Secret's value: only its size in bytes is shown.
    Hidden(usize),
}

/// A difference before it is written out: found while matching list
/// elements, most are discarded, so nothing is formatted until the end.
#[derive(Debug)]
struct Miss<'a> {
    path: Vec<Seg<'a>>,
    found: Shown<'a>,
    rendered: Shown<'a>,
    note: Option<String>,
    /// The comparison cannot go on (too deep, too large): no other list
    /// element is tried.
    abort: bool,
}

type Step<'a> = Result<(), Box<Miss<'a>>>;

impl Miss<'_> {
    fn difference(&self) -> Difference {
        let show = |s: &Shown<'_>| match s {
            Shown::Missing => None,
            Shown::Value(v) => Some(echo::value(&compact(v))),
            Shown::Text(t) => Some((*t).to_owned()),
            Shown::Hidden(n) => Some(format!("({n} bytes, not shown)")),
        };
        Difference {
            path: path_text(&self.path),
            found: show(&self.found),
            rendered: show(&self.rendered).unwrap_or_else(|| "nothing".to_owned()),
            note: self.note.clone(),
        }
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("(unprintable: {e})"))
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn path_text(path: &[Seg<'_>]) -> String {
    use std::fmt::Write as _;
    if path.is_empty() {
        return ".".to_owned();
    }
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if is_identifier(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Key(k) => {
                let key = echo::value(k);
                let _ = write!(out, "[{}]", compact(&Value::String(key)));
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Seg::Named(name) => {
                let plain = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-:/".contains(&b));
                let name = echo::value(name);
                if plain {
                    let _ = write!(out, "[name={name}]");
                } else {
                    let _ = write!(out, "[name={}]", compact(&Value::String(name)));
                }
            }
        }
    }
    out
}

/// The state of one comparison: where it is, and the work done so far.
struct Comparer<'a> {
    /// Which built-in kind the rendering is, for its quantity fields.
    kind: Kind,
    /// The rendering is a Secret (core group).
    secret: bool,
    path: Vec<Seg<'a>>,
    steps: usize,
    /// List elements compared with one another so far.
    comparisons: usize,
}

impl<'a> Comparer<'a> {
    fn new(rendered: &'a Value) -> Self {
        Comparer {
            kind: Kind::of(rendered),
            secret: rendered.get("kind").and_then(Value::as_str) == Some("Secret")
                && rendered
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .map(group_of)
                    == Some(""),
            path: Vec::with_capacity(16),
            steps: 0,
            comparisons: 0,
        }
    }

    fn miss(&self, found: Shown<'a>, rendered: Shown<'a>) -> Box<Miss<'a>> {
        Box::new(Miss {
            path: self.path.clone(),
            found,
            rendered,
            note: None,
            abort: false,
        })
    }

    fn abort(&self, found: Shown<'a>, rendered: Shown<'a>, note: String) -> Box<Miss<'a>> {
        Box::new(Miss {
            path: self.path.clone(),
            found,
            rendered,
            note: Some(note),
            abort: true,
        })
    }

    fn root(&mut self, rendered: &'a Value, object: &'a Value) -> Step<'a> {
        let (Value::Object(r), Value::Object(o)) = (rendered, object) else {
            return self.value(rendered, Some(object), 0);
        };
        if let Some(version) = r.get("apiVersion").filter(|v| !v.is_null()) {
            let found = o.get("apiVersion");
            if found != Some(version) {
                self.path.push(Seg::Key("apiVersion"));
                let mut miss = self.miss(
                    found.map_or(Shown::Missing, Shown::Value),
                    Shown::Value(version),
                );
                if let (Some(Value::String(found)), Value::String(version)) = (found, version) {
                    miss.note = Some(format!(
                        "the object arrived in {}, head renders {} (fields are compared only in the same version)",
                        echo::value(found),
                        echo::value(version)
                    ));
                }
                return Err(miss);
            }
        }
        for (key, value) in r {
            if key == "status" || key == "apiVersion" {
                continue;
            }
            match (key.as_str(), value) {
                ("data", Value::Object(data)) if self.secret => {
                    let overridden = r.get("stringData").and_then(Value::as_object);
                    self.secret_data(data, overridden, o)?;
                }
                ("stringData", Value::Object(strings)) if self.secret => {
                    self.secret_strings(strings, o)?;
                }
                _ => self.entry(key, value, o, 1)?,
            }
        }
        Ok(())
    }

    /// A Secret's rendered `data` against the object's, by decoded bytes
    /// (a rendering may wrap or pad its base64 differently); an entry the
    /// rendered `stringData` also sets is skipped, as the API server
    /// overwrites it with that one.
    fn secret_data(
        &mut self,
        data: &'a Map<String, Value>,
        overridden: Option<&'a Map<String, Value>>,
        object: &'a Map<String, Value>,
    ) -> Step<'a> {
        let found_data = object.get("data").and_then(Value::as_object);
        self.path.push(Seg::Key("data"));
        for (key, value) in data {
            let wins = overridden
                .and_then(|o| o.get(key))
                .is_some_and(|v| !v.is_null());
            if value.is_null() || wins {
                continue;
            }
            let found = found_data.and_then(|d| d.get(key));
            let Value::String(r) = value else {
                // Not a Secret's value (the API server refuses it): as
                // any other field.
                self.path.push(Seg::Key(key));
                self.value(value, found, 2)?;
                self.path.pop();
                continue;
            };
            let same = match found {
                Some(Value::String(o)) => {
                    r == o || matches!((decode(r), decode(o)), (Some(r), Some(o)) if r == o)
                }
                _ => false,
            };
            if !same {
                self.path.push(Seg::Key(key));
                return Err(self.hidden_miss(found, hidden_size(value, true), None));
            }
        }
        self.path.pop();
        Ok(())
    }

    /// A Secret's rendered `stringData`: against the object's `stringData`
    /// where it has the entry, else against its base64-decoded `data`,
    /// where the API server folds `stringData`.
    fn secret_strings(
        &mut self,
        strings: &'a Map<String, Value>,
        object: &'a Map<String, Value>,
    ) -> Step<'a> {
        for (key, value) in strings {
            if value.is_null() {
                continue;
            }
            if !value.is_string() {
                // Not a Secret's value (the API server refuses it): as
                // any other field.
                let found = object.get("stringData").and_then(|s| s.get(key));
                self.path.extend([Seg::Key("stringData"), Seg::Key(key)]);
                self.value(value, found, 2)?;
                self.path.truncate(self.path.len() - 2);
                continue;
            }
            if let Some(found) = object
                .get("stringData")
                .and_then(|s| s.get(key))
                .filter(|v| !v.is_null())
            {
                if found != value {
                    self.path.extend([Seg::Key("stringData"), Seg::Key(key)]);
                    return Err(self.hidden_miss(Some(found), hidden_size(value, false), None));
                }
                continue;
            }
            let found = object.get("data").and_then(|d| d.get(key));
            let same = match (value, found) {
                (Value::String(r), Some(Value::String(o))) => {
                    decode(o).is_some_and(|o| o == r.as_bytes())
                }
                _ => false,
            };
            if !same {
                self.path.extend([Seg::Key("data"), Seg::Key(key)]);
                let shown = path_text(&[Seg::Key("stringData"), Seg::Key(key)]);
                let note = format!("head renders it as {shown}");
                return Err(self.hidden_miss(found, hidden_size(value, false), Some(note)));
            }
        }
        Ok(())
    }

    /// A difference in a Secret's values, which are not shown: only their
    /// sizes (decoded, for `data`).
    fn hidden_miss(
        &self,
        found: Option<&'a Value>,
        rendered: usize,
        note: Option<String>,
    ) -> Box<Miss<'a>> {
        let mut miss = self.miss(
            found.map_or(Shown::Missing, |f| Shown::Hidden(hidden_size(f, true))),
            Shown::Hidden(rendered),
        );
        let hidden = "a Secret's values are not shown";
        miss.note = Some(match note {
            Some(note) => format!("{note}; {hidden}"),
            None => hidden.to_owned(),
        });
        miss
    }

    /// The rendered `key: value` of a map against the object's map.
    fn entry(
        &mut self,
        key: &'a str,
        value: &'a Value,
        object: &'a Map<String, Value>,
        depth: usize,
    ) -> Step<'a> {
        self.path.push(Seg::Key(key));
        self.value(value, object.get(key), depth)?;
        self.path.pop();
        Ok(())
    }

    fn value(&mut self, rendered: &'a Value, object: Option<&'a Value>, depth: usize) -> Step<'a> {
        self.steps += 1;
        if depth > MAX_DEPTH {
            return Err(self.abort(
                Shown::Text("(nested too deep)"),
                Shown::Text("(nested too deep)"),
                format!("nested deeper than {MAX_DEPTH} levels: not compared"),
            ));
        }
        if self.steps > MAX_STEPS {
            return Err(self.abort(
                Shown::Text("(not compared)"),
                Shown::Text("(not compared)"),
                format!("the object is too large to compare (more than {MAX_STEPS} values)"),
            ));
        }
        let found = object.map_or(Shown::Missing, Shown::Value);
        match (rendered, object) {
            (Value::Null, _) => Ok(()),
            (_, None | Some(Value::Null)) if sets_nothing(rendered, depth) => Ok(()),
            (Value::Object(r), Some(Value::Object(o))) => {
                for (key, value) in r {
                    self.entry(key, value, o, depth + 1)?;
                }
                Ok(())
            }
            (Value::Array(r), Some(o @ Value::Array(oa))) => {
                self.list(rendered, r, o, oa, depth + 1)
            }
            (Value::Object(_) | Value::Array(_), _) => {
                Err(self.miss(found, Shown::Value(rendered)))
            }
            (_, Some(o)) if self.scalar_eq(rendered, o) => Ok(()),
            (_, Some(o)) if self.quantities_eq(rendered, o) => Ok(()),
            _ => Err(self.miss(found, Shown::Value(rendered))),
        }
    }

    /// A list of maps matches when each rendered element matches a
    /// different object element, in any order; any other list compares
    /// element by element, in order.
    fn list(
        &mut self,
        whole: &'a Value,
        rendered: &'a [Value],
        object_whole: &'a Value,
        object: &'a [Value],
        depth: usize,
    ) -> Step<'a> {
        let maps = if rendered.is_empty() {
            object.iter().all(Value::is_object)
        } else {
            rendered.iter().all(Value::is_object)
        };
        if maps {
            let list = List {
                whole,
                rendered,
                object_whole,
                object,
                depth,
            };
            self.assign(&list)
        } else {
            self.ordered(whole, rendered, object_whole, object, depth)
        }
    }

    /// Pairs each rendered element with a different object element it
    /// matches: first the cheap guess (the first free object element of
    /// the same `name`, else the one at the same index), then augmenting
    /// paths (Kuhn's algorithm) for the elements the guess left.
    fn assign(&mut self, list: &List<'a>) -> Step<'a> {
        let m = list.object.len();
        let mut owner: Vec<Option<usize>> = vec![None; m];
        let mut names = Names::default();
        let mut tried: HashMap<(usize, usize), bool> = HashMap::new();
        let mut left = Vec::new();
        for (i, r) in list.rendered.iter().enumerate() {
            let guess = match name_of(r) {
                Some(name) => names.first_free(name, list.object, &owner),
                None => (i < m && owner[i].is_none()).then_some(i),
            };
            if let Some(j) = guess {
                if self.element(list, i, j)? {
                    owner[j] = Some(i);
                    continue;
                }
                tried.insert((i, j), false);
            }
            left.push(i);
        }
        if left.is_empty() {
            return Ok(());
        }
        names.index(list.object);
        let mut search = Search {
            owner,
            tried,
            names,
            visited: vec![0; m],
            round: 0,
        };
        for i in left {
            if !self.augment(list, &mut search, i)? {
                return Err(self.unmatched(list, &search, i));
            }
        }
        Ok(())
    }

    /// Whether rendered element `i` matches object element `j`; an error
    /// only when the comparison cannot go on.
    fn element(&mut self, list: &List<'a>, i: usize, j: usize) -> Result<bool, Box<Miss<'a>>> {
        self.comparisons += 1;
        if self.comparisons > MAX_ELEMENT_COMPARISONS {
            return Err(self.abort(
                Shown::Value(list.object_whole),
                Shown::Value(list.whole),
                format!(
                    "the list is too large to compare (more than {MAX_ELEMENT_COMPARISONS} element comparisons)"
                ),
            ));
        }
        let (Some(r), Some(o)) = (list.rendered.get(i), list.object.get(j)) else {
            return Ok(false);
        };
        let len = self.path.len();
        self.path.push(Seg::Index(j));
        let result = self.value(r, Some(o), list.depth);
        self.path.truncate(len);
        match result {
            Ok(()) => Ok(true),
            Err(miss) if miss.abort => Err(miss),
            Err(_) => Ok(false),
        }
    }

    /// One augmenting-path search from rendered element `root`, with an
    /// explicit stack (a path can be as long as the list).
    fn augment(
        &mut self,
        list: &List<'a>,
        s: &mut Search<'a>,
        root: usize,
    ) -> Result<bool, Box<Miss<'a>>> {
        s.round += 1;
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(top) = stack.last_mut() {
            let (i, at) = *top;
            let Some(j) = s.candidate(list, i, at) else {
                stack.pop();
                continue;
            };
            top.1 += 1;
            if s.visited.get(j) == Some(&s.round) {
                continue;
            }
            let fits = match s.tried.get(&(i, j)) {
                Some(&fits) => fits,
                None => {
                    let fits = self.element(list, i, j)?;
                    s.tried.insert((i, j), fits);
                    fits
                }
            };
            if !fits {
                continue;
            }
            if let Some(seen) = s.visited.get_mut(j) {
                *seen = s.round;
            }
            match s.owner.get(j).copied().flatten() {
                Some(holder) => stack.push((holder, 0)),
                None => {
                    // Each element on the stack takes the candidate it
                    // last tried.
                    for &(k, next) in &stack {
                        if let Some(jk) = next.checked_sub(1).and_then(|a| s.candidate(list, k, a))
                            && let Some(slot) = s.owner.get_mut(jk)
                        {
                            *slot = Some(k);
                        }
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The difference to report for rendered element `i`, which matches no
    /// free object element: against the object element of the same `name`
    /// (else the same index), at the deepest field where they differ.
    fn unmatched(&mut self, list: &List<'a>, s: &Search<'a>, i: usize) -> Box<Miss<'a>> {
        let Some(r) = list.rendered.get(i) else {
            return self.miss(Shown::Value(list.object_whole), Shown::Value(list.whole));
        };
        let candidates: &[usize] = match name_of(r) {
            Some(name) => s.names.of(name),
            None if i < list.object.len() => std::slice::from_ref(&i),
            None => &[],
        };
        for &j in candidates {
            let Some(o) = list.object.get(j) else {
                continue;
            };
            let len = self.path.len();
            self.path.push(Seg::Index(j));
            let result = self.value(r, Some(o), list.depth);
            self.path.truncate(len);
            if let Err(miss) = result {
                return miss;
            }
        }
        let taken = match (candidates.first(), name_of(r)) {
            (Some(&j), _) => Some(j),
            (None, Some(_)) => None,
            // Unnamed, past the object's end: does it match any?
            (None, None) => {
                let mut found = None;
                for j in 0..list.object.len() {
                    match self.element(list, i, j) {
                        Ok(true) => {
                            found = Some(j);
                            break;
                        }
                        Ok(false) => {}
                        Err(miss) => return miss,
                    }
                }
                found
            }
        };
        if let Some(j) = taken {
            // It matches, but only elements other rendered ones take.
            self.path.push(Seg::Index(j));
            let mut miss = self.miss(
                list.object.get(j).map_or(Shown::Missing, Shown::Value),
                Shown::Value(r),
            );
            self.path.pop();
            miss.note = Some(
                "each rendered element must match a different element of the object, and the elements this one matches are taken by others"
                    .to_owned(),
            );
            return miss;
        }
        self.path.push(match name_of(r) {
            Some(name) => Seg::Named(name),
            None => Seg::Index(i),
        });
        let miss = self.miss(Shown::Missing, Shown::Value(r));
        self.path.pop();
        miss
    }

    /// Element by element, in order; the object's list as long.
    fn ordered(
        &mut self,
        whole: &'a Value,
        rendered: &'a [Value],
        object_whole: &'a Value,
        object: &'a [Value],
        depth: usize,
    ) -> Step<'a> {
        for (i, r) in rendered.iter().enumerate() {
            self.path.push(Seg::Index(i));
            self.value(r, object.get(i), depth)?;
            self.path.pop();
        }
        if object.len() > rendered.len() {
            let mut miss = self.miss(Shown::Value(object_whole), Shown::Value(whole));
            miss.note = Some(format!(
                "the object's list has {} elements, head renders {}",
                object.len(),
                rendered.len()
            ));
            return Err(miss);
        }
        Ok(())
    }

    /// At a quantity field of a built-in kind, whether both values are
    /// quantities of the same value (`500m` and `0.5`).
    fn quantities_eq(&self, rendered: &Value, object: &Value) -> bool {
        quantity_at(self.kind, &self.path)
            && matches!((quantity(rendered), quantity(object)), (Some(r), Some(o)) if r == o)
    }

    fn scalar_eq(&self, rendered: &Value, object: &Value) -> bool {
        match (rendered, object) {
            (Value::Number(r), Value::Number(o)) => numbers_eq(r, o),
            _ => rendered == object,
        }
    }
}

/// Element comparisons one [`compare`] makes while pairing list elements;
/// more is a [`Difference`] (the list is too large to compare).
pub const MAX_ELEMENT_COMPARISONS: usize = 100_000;

/// A list of maps being paired.
struct List<'a> {
    whole: &'a Value,
    rendered: &'a [Value],
    object_whole: &'a Value,
    object: &'a [Value],
    depth: usize,
}

fn name_of(v: &Value) -> Option<&str> {
    v.get("name")?.as_str()
}

/// The object's list elements by `name`, built only when needed.
#[derive(Default)]
struct Names<'a> {
    index: Option<HashMap<&'a str, Vec<usize>>>,
}

impl<'a> Names<'a> {
    /// Short lists are scanned rather than indexed.
    const SCAN: usize = 16;

    fn index(&mut self, object: &'a [Value]) {
        if self.index.is_none() {
            let mut index: HashMap<&str, Vec<usize>> = HashMap::new();
            for (j, o) in object.iter().enumerate() {
                if let Some(name) = name_of(o) {
                    index.entry(name).or_default().push(j);
                }
            }
            self.index = Some(index);
        }
    }

    fn of(&self, name: &str) -> &[usize] {
        self.index
            .as_ref()
            .and_then(|index| index.get(name))
            .map_or(&[], Vec::as_slice)
    }

    fn first_free(
        &mut self,
        name: &str,
        object: &'a [Value],
        owner: &[Option<usize>],
    ) -> Option<usize> {
        let free = |j: &usize| owner.get(*j).is_some_and(Option::is_none);
        if object.len() <= Self::SCAN {
            return (0..object.len())
                .find(|j| free(j) && object.get(*j).and_then(name_of) == Some(name));
        }
        self.index(object);
        self.of(name).iter().copied().find(free)
    }
}

/// The state of the augmenting-path search over one list.
struct Search<'a> {
    /// Object element -> the rendered element it is paired with.
    owner: Vec<Option<usize>>,
    /// Element comparisons made: (rendered, object) -> matched.
    tried: HashMap<(usize, usize), bool>,
    names: Names<'a>,
    /// Object elements visited, by search round.
    visited: Vec<u32>,
    round: u32,
}

impl Search<'_> {
    /// The `at`-th object element rendered element `i` may match: those
    /// of its `name`, or, unnamed, any (the same index first).
    fn candidate(&self, list: &List<'_>, i: usize, at: usize) -> Option<usize> {
        let m = list.object.len();
        match list.rendered.get(i).and_then(name_of) {
            Some(name) => self.names.of(name).get(at).copied(),
            None if i < m => match at {
                0 => Some(i),
                _ => Some(if at - 1 < i { at - 1 } else { at }).filter(|&j| j < m),
            },
            None => (at < m).then_some(at),
        }
    }
}

/// The built-in kinds with quantity fields (module docs), by the schema
/// of their fields; every other kind, custom resources included, is kept
/// as applied by the API server and compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    /// A pod spec at `spec`.
    Pod,
    /// At `template.spec`.
    PodTemplate,
    /// At `spec.template.spec`: ReplicationController, Deployment,
    /// ReplicaSet, DaemonSet, Job.
    Workload,
    /// A workload with `spec.volumeClaimTemplates`.
    StatefulSet,
    /// At `spec.jobTemplate.spec.template.spec`.
    CronJob,
    PersistentVolumeClaim,
    PersistentVolume,
    ResourceQuota,
    LimitRange,
    HorizontalPodAutoscaler,
    CsiStorageCapacity,
}

impl Kind {
    fn of(rendered: &Value) -> Kind {
        let group = rendered
            .get("apiVersion")
            .and_then(Value::as_str)
            .map_or("", group_of);
        let kind = rendered.get("kind").and_then(Value::as_str).unwrap_or("");
        match (group, kind) {
            ("", "Pod") => Kind::Pod,
            ("", "PodTemplate") => Kind::PodTemplate,
            ("", "ReplicationController")
            | ("apps" | "extensions", "Deployment" | "ReplicaSet" | "DaemonSet")
            | ("batch", "Job") => Kind::Workload,
            ("apps", "StatefulSet") => Kind::StatefulSet,
            ("batch", "CronJob") => Kind::CronJob,
            ("", "PersistentVolumeClaim") => Kind::PersistentVolumeClaim,
            ("", "PersistentVolume") => Kind::PersistentVolume,
            ("", "ResourceQuota") => Kind::ResourceQuota,
            ("", "LimitRange") => Kind::LimitRange,
            ("autoscaling", "HorizontalPodAutoscaler") => Kind::HorizontalPodAutoscaler,
            ("storage.k8s.io", "CSIStorageCapacity") => Kind::CsiStorageCapacity,
            _ => Kind::Other,
        }
    }
}

/// Whether `path` is a quantity field of `kind` (module docs list them).
fn quantity_at(kind: Kind, path: &[Seg<'_>]) -> bool {
    const POD_SPEC: &[&str] = &["spec"];
    const TEMPLATE: &[&str] = &["spec", "template", "spec"];
    match kind {
        Kind::Other => false,
        Kind::Pod => after(path, POD_SPEC).is_some_and(pod_spec),
        Kind::PodTemplate => after(path, &["template", "spec"]).is_some_and(pod_spec),
        Kind::Workload => after(path, TEMPLATE).is_some_and(pod_spec),
        Kind::StatefulSet => {
            after(path, TEMPLATE).is_some_and(pod_spec)
                || after(path, &["spec", "volumeClaimTemplates", "[]", "spec"])
                    .is_some_and(claim_spec)
        }
        Kind::CronJob => {
            after(path, &["spec", "jobTemplate", "spec", "template", "spec"]).is_some_and(pod_spec)
        }
        Kind::PersistentVolumeClaim => after(path, &["spec"]).is_some_and(claim_spec),
        Kind::PersistentVolume => fits(path, &["spec", "capacity", "*"]),
        Kind::ResourceQuota => fits(path, &["spec", "hard", "*"]),
        Kind::LimitRange => fits(
            path,
            &[
                "spec",
                "limits",
                "[]",
                "max|min|default|defaultRequest|maxLimitRequestRatio",
                "*",
            ],
        ),
        Kind::HorizontalPodAutoscaler => fits(
            path,
            &[
                "spec",
                "metrics",
                "[]",
                "resource|containerResource|pods|object|external",
                "target",
                "value|averageValue",
            ],
        ),
        Kind::CsiStorageCapacity => fits(path, &["capacity|maximumVolumeSize"]),
    }
}

/// Quantity fields of a pod spec.
fn pod_spec(rest: &[Seg<'_>]) -> bool {
    fits(
        rest,
        &[
            "containers|initContainers|ephemeralContainers",
            "[]",
            "resources",
            "requests|limits",
            "*",
        ],
    ) || fits(rest, &["resources", "requests|limits", "*"])
        || fits(rest, &["overhead", "*"])
        || fits(rest, &["volumes", "[]", "emptyDir", "sizeLimit"])
        || after(
            rest,
            &["volumes", "[]", "ephemeral", "volumeClaimTemplate", "spec"],
        )
        .is_some_and(claim_spec)
}

/// Quantity fields of a PersistentVolumeClaim spec.
fn claim_spec(rest: &[Seg<'_>]) -> bool {
    fits(rest, &["resources", "requests|limits", "*"])
}

/// Whether a path step is what a pattern token names: `*` any key, `[]`
/// any list element, else one of the `|`-separated keys.
fn step_is(seg: &Seg<'_>, token: &str) -> bool {
    match seg {
        Seg::Key(k) => token == "*" || token.split('|').any(|t| t == *k),
        Seg::Index(_) | Seg::Named(_) => token == "[]",
    }
}

/// The rest of `path` after `prefix`.
fn after<'p, 'a>(path: &'p [Seg<'a>], prefix: &[&str]) -> Option<&'p [Seg<'a>]> {
    let (head, rest) = path.split_at_checked(prefix.len())?;
    head.iter()
        .zip(prefix)
        .all(|(s, t)| step_is(s, t))
        .then_some(rest)
}

fn fits(path: &[Seg<'_>], pattern: &[&str]) -> bool {
    after(path, pattern).is_some_and(<[_]>::is_empty)
}

/// A quantity's value in units of 10^-9, as the API server keeps it, or
/// `None` when it is not one (or too large to hold).
fn quantity(v: &Value) -> Option<i128> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        _ => None,
    }
}

/// The largest quantity the API server keeps in the SI and binary forms,
/// 2^63-1, in units of 10^-9.
const QUANTITY_CAP: i128 = i64::MAX as i128 * 1_000_000_000;

/// Parses a Kubernetes `resource.Quantity` exactly, as the API server
/// does: `<sign><digits>[.<digits>]<suffix>`, the suffix a decimal SI one
/// (`n u m "" k M G T P E`), a binary one (`Ki Mi Gi Ti Pi Ei`) or an
/// exponent (`e3`, `E-2`). The value is in units of 10^-9 (the API server
/// rounds a smaller non-zero magnitude up to 1n), capped at 2^63-1 in the
/// SI and binary forms as the API server caps it; `None` for anything else,
/// or a value an `i128` cannot hold (compared then as text).
pub fn parse_quantity(s: &str) -> Option<i128> {
    let bytes = s.as_bytes();
    let (negative, rest) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, bytes),
    };
    let digits = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_digit()).count();
    let (int, rest) = rest.split_at(digits(rest));
    let (frac, suffix) = match rest.split_first() {
        Some((b'.', after_point)) => after_point.split_at(digits(after_point)),
        _ => (&[][..], rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let (exp10, binary, capped): (i64, u32, bool) = match suffix {
        b"" => (0, 0, true),
        b"n" => (-9, 0, true),
        b"u" => (-6, 0, true),
        b"m" => (-3, 0, true),
        b"k" => (3, 0, true),
        b"M" => (6, 0, true),
        b"G" => (9, 0, true),
        b"T" => (12, 0, true),
        b"P" => (15, 0, true),
        b"E" => (18, 0, true),
        b"Ki" => (0, 10, true),
        b"Mi" => (0, 20, true),
        b"Gi" => (0, 30, true),
        b"Ti" => (0, 40, true),
        b"Pi" => (0, 50, true),
        b"Ei" => (0, 60, true),
        [b'e' | b'E', exponent @ ..] => (exponent_of(exponent)?, 0, false),
        _ => return None,
    };
    // The significant digits: no leading or trailing zeros.
    let all: Vec<u8> = int.iter().chain(frac).copied().collect();
    let Some(first) = all.iter().position(|&d| d != b'0') else {
        return Some(0);
    };
    let last = all.iter().rposition(|&d| d != b'0').unwrap_or(first);
    let significant = all.get(first..=last)?;
    let trailing = (all.len() - 1 - last) as i64;
    // value = significant * 10^scale * 2^binary, in units of 10^-9.
    let scale = exp10 - frac.len() as i64 + trailing + 9;
    let magnitude = if scale >= 0 {
        u32::try_from(scale)
            .ok()
            .and_then(|k| 10i128.checked_pow(k))
            .and_then(|p| integer(significant)?.checked_mul(p))
            .and_then(|v| v.checked_mul(1i128 << binary))
    } else if binary == 0 {
        // Rounded up: the dropped digits end in a non-zero one.
        let keep = significant.len() as i64 + scale;
        if keep <= 0 {
            Some(1)
        } else {
            integer(significant.get(..keep as usize)?).and_then(|v| v.checked_add(1))
        }
    } else {
        let v = integer(significant)?.checked_mul(1i128 << binary)?;
        let k = u32::try_from(-scale).ok();
        Some(match k.and_then(|k| 10i128.checked_pow(k)) {
            Some(d) => v / d + i128::from(v % d != 0),
            None => 1,
        })
    };
    let magnitude = match magnitude {
        Some(v) if capped => v.min(QUANTITY_CAP),
        Some(v) => v,
        // Beyond i128 means far beyond the cap.
        None if capped => QUANTITY_CAP,
        None => return None,
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// An exponent suffix's number: an optional sign and decimal digits,
/// within an `i32` as the API server reads it.
fn exponent_of(text: &[u8]) -> Option<i64> {
    let digits = match text.split_first() {
        Some((b'+' | b'-', rest)) => rest,
        _ => text,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: i64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    i32::try_from(n).ok().map(i64::from)
}

/// Decimal digits as an integer, `None` beyond `i128`.
fn integer(digits: &[u8]) -> Option<i128> {
    digits.iter().try_fold(0i128, |v, d| {
        v.checked_mul(10)?.checked_add(i128::from(d - b'0'))
    })
}

/// Base64 as the API server reads a Secret's `data` (Go's
/// `StdEncoding`: padded, line breaks ignored, trailing bits allowed).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

fn decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if text.contains(['\r', '\n']) {
        let joined: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        BASE64.decode(joined).ok()
    } else {
        BASE64.decode(text).ok()
    }
}

/// The size shown for a Secret's value: its bytes, decoded when it is
/// base64 `data`.
fn hidden_size(v: &Value, base64: bool) -> usize {
    match v {
        Value::String(s) if base64 => decode(s).map_or(s.len(), |d| d.len()),
        Value::String(s) => s.len(),
        other => compact(other).len(),
    }
}

/// Whether a rendered value sets no field: `null`, or a map or list of
/// nothing but such values.
fn sets_nothing(v: &Value, depth: usize) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => depth <= MAX_DEPTH && m.values().all(|v| sets_nothing(v, depth + 1)),
        _ => false,
    }
}

/// Numbers by value: integers exactly, an integral float equal to the
/// integer it spells (`1.0 == 1`), floats as floats.
fn numbers_eq(a: &Number, b: &Number) -> bool {
    fn integer(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    fn integral(f: f64) -> Option<i128> {
        // Within ±2^120 the conversion is exact.
        (f.is_finite() && f.fract() == 0.0 && f.abs() < 1.329_228e36).then_some(f as i128)
    }
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => x == y,
        (Some(x), None) => b.as_f64().and_then(integral) == Some(x),
        (None, Some(y)) => a.as_f64().and_then(integral) == Some(y),
        (None, None) => a.as_f64() == b.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a row expects: a match, or the difference's path, found and
    /// rendered values, and a piece of its note.
    enum Want {
        Match,
        Differ(&'static str, Option<&'static str>, &'static str),
        DifferNote(&'static str, &'static str),
    }
    use Want::{Differ, DifferNote, Match};

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"},
                "annotations": {"fluxcd.io/checksum": "abc"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "web", "image": "web:1.2",
                        "args": ["--port", "8080"],
                        "env": [{"name": "A", "value": "1"}, {"name": "FOO", "value": "bar"},
                                {"name": "B", "value": "2"}],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                        "ports": [{"containerPort": 8080}]
                    }]}
                }
            }
        })
    }

    /// `deployment()` as the API server admits it: metadata and defaults
    /// added, `status` set.
    fn admitted() -> Value {
        let mut o = deployment();
        let meta = o["metadata"].as_object_mut().unwrap();
        meta.insert("namespace".into(), json!("prod"));
        meta.insert("uid".into(), json!("8c6c2f5e-1f1a-4f4e-9a43-5c8c3a0b8d11"));
        meta.insert("resourceVersion".into(), json!("123456"));
        meta.insert("generation".into(), json!(4));
        meta.insert("creationTimestamp".into(), json!("2026-12-01T10:00:00Z"));
        meta.insert(
            "managedFields".into(),
            json!([{"manager": "kustomize-controller",
            "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]),
        );
        o["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("7");
        o["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        o["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
        o["status"] = json!({"replicas": 3, "readyReplicas": 2});
        o
    }

    /// `v` with the value at `pointer` set (a map's key added if new).
    fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        if let Some(slot) = v.pointer_mut(pointer) {
            *slot = value;
        } else {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let key = key.replace("~1", "/").replace("~0", "~");
            v.pointer_mut(parent).unwrap()[key] = value;
        }
        v
    }

    fn without(mut v: Value, pointer: &str) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match v.pointer_mut(parent).unwrap() {
            Value::Object(m) => {
                m.remove(key).unwrap();
            }
            Value::Array(a) => {
                a.remove(key.parse().unwrap());
            }
            _ => panic!("{pointer}"),
        }
        v
    }

    fn config_map(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "prod"}, "data": data})
    }

    fn secret(fields: Value) -> Value {
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db", "namespace": "prod"}});
        for (k, v) in fields.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }

    #[test]
    fn a_secret_difference_shows_no_value() {
        let d = compare(
            &secret(json!({"stringData": {"password": "hunter2-new"}})),
            &secret(json!({"data": {"password": "aHVudGVyMi1vbGQ="}})),
        )
        .unwrap_err();
        let text = d.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("aHVudGVy"),
            "{text}"
        );
        assert!(text.contains("not shown"), "{text}");
    }

    fn ingress(service: &str) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "web.example.com", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": 80}}}}]}}]}})
    }

    fn rows() -> Vec<(&'static str, Value, Value, Want)> {
        const C0: &str = "/spec/template/spec/containers/0";
        vec![
            (
                "server-added metadata and status are ignored",
                deployment(),
                admitted(),
                Match,
            ),
            (
                "the rendering's status is ignored",
                with(deployment(), "/status", json!({"replicas": 1})),
                admitted(),
                Match,
            ),
            (
                "keys in another order",
                serde_json::from_str(
                    r#"{"kind": "ConfigMap", "data": {"b": "2", "a": "1"},
                    "metadata": {"name": "settings"}, "apiVersion": "v1"}"#,
                )
                .unwrap(),
                serde_json::from_str(
                    r#"{"apiVersion": "v1", "metadata": {"name": "settings",
                    "namespace": "prod"}, "data": {"a": "1", "b": "2"}, "kind": "ConfigMap"}"#,
                )
                .unwrap(),
                Match,
            ),
            (
                "a namespace-less rendering matches the object in its namespace",
                without(deployment(), "/metadata/annotations"),
                with(deployment(), "/metadata/namespace", json!("prod")),
                Match,
            ),
            (
                "null in the rendering is ignored",
                with(deployment(), "/metadata/creationTimestamp", Value::Null),
                admitted(),
                Match,
            ),
            (
                "an empty map in the rendering matches a missing field",
                with(deployment(), "/spec/strategy", json!({})),
                deployment(),
                Match,
            ),
            (
                "1 equals 1.0",
                with(deployment(), "/spec/replicas", json!(1)),
                with(admitted(), "/spec/replicas", json!(1.0)),
                Match,
            ),
            (
                "a number is not the same number as a string",
                with(deployment(), "/spec/replicas", json!(3)),
                with(admitted(), "/spec/replicas", json!("3")),
                Differ("spec.replicas", Some("\"3\""), "3"),
            ),
            (
                "a field the object lacks",
                deployment(),
                without(admitted(), "/spec/selector"),
                Differ("spec.selector", None, r#"{"matchLabels":{"app":"web"}}"#),
            ),
            (
                "an annotation key with dots and a slash is quoted",
                with(
                    deployment(),
                    "/metadata/annotations/fluxcd.io~1checksum",
                    json!("new"),
                ),
                admitted(),
                Differ(
                    r#"metadata.annotations["fluxcd.io/checksum"]"#,
                    Some("\"abc\""),
                    "\"new\"",
                ),
            ),
            (
                "lists of scalars are compared in order",
                deployment(),
                with(admitted(), &format!("{C0}/args"), json!(["8080", "--port"])),
                Differ(
                    "spec.template.spec.containers[0].args[0]",
                    Some("\"8080\""),
                    "\"--port\"",
                ),
            ),
            (
                "a list of scalars with an extra element",
                deployment(),
                with(
                    admitted(),
                    &format!("{C0}/args"),
                    json!(["--port", "8080", "-v"]),
                ),
                DifferNote(
                    "spec.template.spec.containers[0].args",
                    "has 3 elements, head renders 2",
                ),
            ),
            (
                "an injected sidecar container",
                deployment(),
                with(
                    admitted(),
                    "/spec/template/spec/containers",
                    json!([
                        {"name": "istio-proxy", "image": "istio/proxyv2:1.24", "args": ["proxy"]},
                        admitted().pointer(C0).unwrap().clone(),
                    ]),
                ),
                Match,
            ),
            (
                "named elements in another order",
                deployment(),
                with(
                    admitted(),
                    &format!("{C0}/env"),
                    json!([{"name": "B", "value": "2"},
                    {"name": "FOO", "value": "bar"}, {"name": "A", "value": "1"}]),
                ),
                Match,
            ),
            (
                "an env var removed",
                deployment(),
                without(admitted(), &format!("{C0}/env/1")),
                Differ(
                    "spec.template.spec.containers[0].env[name=FOO]",
                    None,
                    r#"{"name":"FOO","value":"bar"}"#,
                ),
            ),
            (
                "an env var changed, named by its index in the object",
                deployment(),
                with(
                    admitted(),
                    &format!("{C0}/env"),
                    json!([{"name": "B", "value": "2"},
                    {"name": "FOO", "value": "baz"}, {"name": "A", "value": "1"}]),
                ),
                Differ(
                    "spec.template.spec.containers[0].env[1].value",
                    Some("\"baz\""),
                    "\"bar\"",
                ),
            ),
            (
                "two equal rendered elements need two object elements",
                with(
                    deployment(),
                    &format!("{C0}/ports"),
                    json!([{"containerPort": 8080}, {"containerPort": 8080}]),
                ),
                with(
                    admitted(),
                    &format!("{C0}/ports"),
                    json!([{"containerPort": 8080, "protocol": "TCP"}]),
                ),
                DifferNote(
                    "spec.template.spec.containers[0].ports[0]",
                    "a different element",
                ),
            ),
            (
                "unnamed elements in another order",
                with(
                    deployment(),
                    "/spec/template/spec/tolerations",
                    json!([{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]),
                ),
                with(
                    admitted(),
                    "/spec/template/spec/tolerations",
                    json!([
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
                    {"key": "b", "operator": "Exists"}, {"key": "a", "operator": "Exists"}]),
                ),
                Match,
            ),
            (
                "a pairing found only by moving another element (augmenting path)",
                with(
                    deployment(),
                    "/spec/template/spec/tolerations",
                    json!([{"key": "a"}, {"key": "a", "effect": "NoSchedule"}]),
                ),
                with(
                    admitted(),
                    "/spec/template/spec/tolerations",
                    json!([{"key": "a", "effect": "NoSchedule"}, {"key": "a"}]),
                ),
                Match,
            ),
            (
                "an unnamed element the object lacks",
                with(
                    deployment(),
                    "/spec/template/spec/tolerations",
                    json!([{"key": "a"}, {"key": "b"}, {"key": "c"}]),
                ),
                with(
                    admitted(),
                    "/spec/template/spec/tolerations",
                    json!([{"key": "a"}, {"key": "b"}]),
                ),
                Differ("spec.template.spec.tolerations[2]", None, r#"{"key":"c"}"#),
            ),
            (
                "500m equals 0.5 in a container's requests",
                deployment(),
                with(
                    admitted(),
                    &format!("{C0}/resources/requests/cpu"),
                    json!("0.5"),
                ),
                Match,
            ),
            (
                "1Gi equals 1024Mi in a container's requests",
                deployment(),
                with(
                    admitted(),
                    &format!("{C0}/resources/requests/memory"),
                    json!("1024Mi"),
                ),
                Match,
            ),
            (
                "a number in a quantity field equals its canonical string",
                with(
                    deployment(),
                    &format!("{C0}/resources/limits"),
                    json!({"cpu": 1, "memory": 1.5e9}),
                ),
                with(
                    admitted(),
                    &format!("{C0}/resources/limits"),
                    json!({"cpu": "1", "memory": "1500M"}),
                ),
                Match,
            ),
            (
                "a different quantity",
                deployment(),
                with(
                    admitted(),
                    &format!("{C0}/resources/requests/cpu"),
                    json!("600m"),
                ),
                Differ(
                    "spec.template.spec.containers[0].resources.requests.cpu",
                    Some("\"600m\""),
                    "\"500m\"",
                ),
            ),
            (
                "a quantity-looking string outside quantity fields",
                config_map(json!({"cpu": "500m"})),
                config_map(json!({"cpu": "0.5"})),
                Differ("data.cpu", Some("\"0.5\""), "\"500m\""),
            ),
            (
                "a custom resource's resources compare exactly",
                json!({"apiVersion": "example.com/v1", "kind": "Deployment", "metadata": {"name": "x"},
                    "spec": {"template": {"spec": {"containers": [{"name": "a",
                        "resources": {"requests": {"cpu": "500m"}}}]}}}}),
                json!({"apiVersion": "example.com/v1", "kind": "Deployment", "metadata": {"name": "x"},
                    "spec": {"template": {"spec": {"containers": [{"name": "a",
                        "resources": {"requests": {"cpu": "0.5"}}}]}}}}),
                Differ(
                    "spec.template.spec.containers[0].resources.requests.cpu",
                    Some("\"0.5\""),
                    "\"500m\"",
                ),
            ),
            (
                "a CronJob's init container, a pod overhead and an emptyDir sizeLimit",
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
                    "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                        "initContainers": [{"name": "i", "resources": {"limits": {"memory": "1Gi"}}}],
                        "overhead": {"cpu": "0.25"},
                        "volumes": [{"name": "t", "emptyDir": {"sizeLimit": "1G"}}]}}}}}}),
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
                    "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                        "initContainers": [{"name": "i", "resources": {"limits": {"memory": "1073741824"}}}],
                        "overhead": {"cpu": "250m"},
                        "volumes": [{"name": "t", "emptyDir": {"sizeLimit": "1e9"}}]}}}}}}),
                Match,
            ),
            (
                "StatefulSet claim templates",
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                    "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
                        "spec": {"resources": {"requests": {"storage": "0.5Gi"}}}}]}}),
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                    "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
                        "spec": {"resources": {"requests": {"storage": "512Mi"}}}}]}}),
                Match,
            ),
            (
                "ResourceQuota hard",
                json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
                    "spec": {"hard": {"requests.cpu": "2", "pods": 10}}}),
                json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
                    "spec": {"hard": {"requests.cpu": "2000m", "pods": "10"}}}),
                Match,
            ),
            (
                "LimitRange limits",
                json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "l"},
                    "spec": {"limits": [{"type": "Container", "default": {"cpu": "0.5"},
                        "max": {"memory": "2Gi"}}]}}),
                json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "l"},
                    "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"},
                        "max": {"memory": "2048Mi"}}]}}),
                Match,
            ),
            (
                "PersistentVolume capacity",
                json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"},
                    "spec": {"capacity": {"storage": "1Ti"}}}),
                json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"},
                    "spec": {"capacity": {"storage": "1024Gi"}}}),
                Match,
            ),
            (
                "a Secret's stringData matches the object's decoded data",
                secret(json!({"stringData": {"password": "s3cret", "tls.key": "k"}})),
                secret(json!({"data": {"password": "czNjcmV0", "tls.key": "aw=="}})),
                Match,
            ),
            (
                "a Secret's stringData differs from the object's data",
                secret(json!({"stringData": {"password": "s3cret"}})),
                secret(json!({"data": {"password": "b2xk"}})),
                Differ(
                    "data.password",
                    Some("(3 bytes, not shown)"),
                    "(6 bytes, not shown)",
                ),
            ),
            (
                "a Secret's stringData the object lacks, with a key to quote",
                secret(json!({"stringData": {"tls.key": "k"}})),
                secret(json!({"data": {"password": "czNjcmV0"}})),
                DifferNote(
                    r#"data["tls.key"]"#,
                    r#"head renders it as stringData["tls.key"]"#,
                ),
            ),
            (
                "a Secret's stringData against the object's stringData",
                secret(json!({"stringData": {"password": "s3cret"}})),
                secret(json!({"stringData": {"password": "s3cret"}, "data": {"password": "b2xk"}})),
                Match,
            ),
            (
                "a Secret's data compares decoded (line breaks ignored)",
                secret(json!({"data": {"password": "czNj\ncmV0"}})),
                secret(json!({"data": {"password": "czNjcmV0"}})),
                Match,
            ),
            (
                "a Secret's data differs",
                secret(json!({"data": {"password": "czNjcmV0"}})),
                secret(json!({"data": {"password": "b2xk"}})),
                Differ(
                    "data.password",
                    Some("(3 bytes, not shown)"),
                    "(6 bytes, not shown)",
                ),
            ),
            (
                "a Secret's stringData overrides its data",
                secret(json!({"data": {"password": "b2xk"}, "stringData": {"password": "s3cret"}})),
                secret(json!({"data": {"password": "czNjcmV0"}})),
                Match,
            ),
            (
                "a Secret's value that is not a string compares as any field",
                secret(json!({"data": {"x": [{"a": 1}]}, "stringData": {"y": {"b": 2}}})),
                secret(
                    json!({"data": {"x": [{"a": 1, "c": 3}]}, "stringData": {"y": {"b": 2, "d": 4}}}),
                ),
                Match,
            ),
            (
                "data in a ConfigMap is not decoded",
                config_map(json!({"password": "czNj\ncmV0"})),
                config_map(json!({"password": "czNjcmV0"})),
                Differ("data.password", Some("\"czNjcmV0\""), "\"czNj\\ncmV0\""),
            ),
            (
                "strings compare exactly outside quantity fields",
                config_map(json!({"version": "1.10"})),
                config_map(json!({"version": "1.1"})),
                Differ("data.version", Some("\"1.1\""), "\"1.10\""),
            ),
            (
                "an object in another version",
                deployment(),
                with(admitted(), "/apiVersion", json!("apps/v1beta1")),
                DifferNote(
                    "apiVersion",
                    "the object arrived in apps/v1beta1, head renders apps/v1 (fields are compared only in the same version)",
                ),
            ),
            (
                "an Ingress whose backend service differs",
                ingress("web-v2"),
                with(ingress("web-v1"), "/metadata/namespace", json!("prod")),
                Differ(
                    "spec.rules[0].http.paths[0].backend.service.name",
                    Some("\"web-v1\""),
                    "\"web-v2\"",
                ),
            ),
        ]
    }

    #[test]
    fn the_rendering_is_a_subset_of_the_object() {
        let mut failed = Vec::new();
        for (name, rendered, object, want) in rows() {
            let got = compare(&rendered, &object);
            assert_eq!(matches(&rendered, &object), got.is_ok(), "{name}");
            let ok = match (&want, &got) {
                (Match, Ok(())) => true,
                (Differ(path, found, shown), Err(d)) => {
                    d.path == *path
                        && d.found.as_deref() == *found
                        && d.rendered == *shown
                        && d.to_string().starts_with(&format!("{path}: "))
                }
                (DifferNote(path, note), Err(d)) => {
                    d.path == *path && d.note.as_deref().is_some_and(|n| n.contains(note))
                }
                _ => false,
            };
            if !ok {
                failed.push(format!("{name}: got {got:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    fn config_list(items: Vec<Value>) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "List", "metadata": {"name": "l"},
            "items": items})
    }

    #[test]
    fn long_lists_pair_by_name_and_cap_the_work() {
        let n = 10_000;
        let named: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("e{i}"), "v": i}))
            .collect();
        let unnamed: Vec<Value> = (0..n).map(|i| json!({"v": i})).collect();
        let reversed = |v: &[Value]| v.iter().rev().cloned().collect::<Vec<_>>();
        let start = std::time::Instant::now();
        assert_eq!(
            compare(&config_list(named.clone()), &config_list(reversed(&named))),
            Ok(())
        );
        assert_eq!(
            compare(&config_list(unnamed.clone()), &config_list(unnamed.clone())),
            Ok(())
        );
        // In reverse, unnamed elements could need n^2/2 comparisons.
        let d = compare(
            &config_list(unnamed.clone()),
            &config_list(reversed(&unnamed)),
        )
        .unwrap_err();
        assert_eq!(d.path, "items");
        assert!(
            d.note.as_deref().unwrap().contains("too large to compare"),
            "{d}"
        );
        assert!(d.found.unwrap().contains("bytes)"));
        eprintln!(
            "three 10,000-element lists compared in {:.2?}",
            start.elapsed()
        );
    }

    #[test]
    fn quantities_parse_exactly() {
        let same = [
            ("500m", "0.5"),
            ("1Gi", "1024Mi"),
            ("1", "1000m"),
            ("1e3", "1k"),
            ("1E3", "1k"),
            ("1e+3", "1000"),
            ("1e-3", "1m"),
            ("1.10", "1.1"),
            ("1.5Gi", "1536Mi"),
            ("+1", "1"),
            ("-1", "-1000m"),
            (".5", "500m"),
            ("1.", "1"),
            ("0", "0Ki"),
            ("000", "-0.0"),
            ("2Ei", "2305843009213693952"),
            ("0.1n", "1n"),
            ("1e-40", "1n"),
            ("0.5Ki", "512"),
            ("0.0000000001Ki", "103n"),
            ("0.0000000000001Ki", "1n"),
            ("100000000000000000000", "9223372036854775807"),
            ("10000E", "9223372036854775807"),
            ("-10000Ei", "-9223372036854775807"),
        ];
        for (a, b) in same {
            let (x, y) = (parse_quantity(a), parse_quantity(b));
            assert!(x.is_some() && x == y, "{a} {x:?} vs {b} {y:?}");
        }
        let different = [
            ("1", "1001m"),
            ("1Ki", "1k"),
            ("1E", "1Ei"),
            ("1n", "1u"),
            ("1e3", "1e4"),
        ];
        for (a, b) in different {
            let (x, y) = (parse_quantity(a), parse_quantity(b));
            assert!(
                x.is_some() && y.is_some() && x != y,
                "{a} {x:?} vs {b} {y:?}"
            );
        }
        assert_eq!(parse_quantity("1.5"), Some(1_500_000_000));
        for bad in [
            "",
            "abc",
            "1K",
            "1e",
            "1 ",
            " 1",
            "1.2.3",
            "--1",
            "1Mi3",
            ".",
            "+",
            "1Ee3",
            "1e99999999999",
            "1e3.5",
            "1m1",
            "1mi",
            "e3",
            "1ee3",
        ] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
        // Beyond i128 in the exponent form (not capped): compared as text.
        assert_eq!(parse_quantity("1e40"), None);
        assert_eq!(
            parse_quantity(&format!("1{}", "0".repeat(5000))),
            Some(QUANTITY_CAP)
        );
    }

    #[test]
    fn a_difference_reads_as_a_sentence() {
        let d = compare(
            &config_map(json!({"a": "x"})),
            &config_map(json!({"a": "y"})),
        )
        .unwrap_err();
        assert_eq!(d.to_string(), r#"data.a: found "y", head renders "x""#);
        let d = compare(&config_map(json!({"a": "x"})), &config_map(json!({}))).unwrap_err();
        assert_eq!(d.to_string(), r#"data.a: missing, head renders "x""#);
        let long = "v".repeat(10_000);
        let d = compare(
            &config_map(json!({"a": long})),
            &config_map(json!({"a": "y"})),
        )
        .unwrap_err();
        assert!(
            d.rendered.chars().count() <= echo::CUT_ABOVE,
            "{}",
            d.rendered
        );
        assert!(d.rendered.contains("(10002 bytes)"), "{}", d.rendered);
    }

    #[test]
    fn a_value_matches_itself_without_a_walk() {
        // The same value, not a copy: no step is taken, so not even the
        // depth guard speaks (a copy of it is refused below).
        let mut deep = json!("leaf");
        for _ in 0..1_000 {
            deep = json!({"a": deep});
        }
        assert_eq!(compare(&deep, &deep), Ok(()));
    }

    #[test]
    fn deep_nesting_is_a_difference_not_a_stack_overflow() {
        // Built iteratively; 1,000 levels is beyond MAX_DEPTH.
        let mut deep = json!("leaf");
        for _ in 0..1_000 {
            deep = json!({"a": deep});
        }
        let rendered = config_map(deep.clone());
        let d = compare(&rendered, &rendered.clone()).unwrap_err();
        assert!(
            d.note
                .as_deref()
                .unwrap()
                .contains("nested deeper than 256"),
            "{d}"
        );
        assert!(d.path.starts_with("data.a.a.a"), "{}", d.path);
    }

    #[test]
    fn identity_takes_the_group_and_an_optional_namespace() {
        let id = Identity::of(&json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "prod"}
        }))
        .unwrap();
        assert_eq!(id.group, "networking.k8s.io");
        assert_eq!(id.to_string(), "Ingress.networking.k8s.io prod/web");
        let keys: Vec<_> = id.lookup_keys().collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].namespace, None);
        let core = Identity::of(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}}))
        .unwrap();
        assert_eq!((core.group.as_str(), core.namespace), ("", None));
        assert!(Identity::of(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).is_none());
    }
}
