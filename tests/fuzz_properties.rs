//! Property-based fuzzing of the parsers and pure decision code, and of the
//! closure walk over small generated git repositories.
//!
//! Every target asserts "no panic, and a sane result". Case counts are small
//! by default so the file runs in well under a minute in debug builds; set
//! `FUZZ_CASES=<n>` to run `n` cases per target (the git target runs
//! `n / 100`, at least its default). See `fuzz/README.md`.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stale_guard::admission;
use stale_guard::checksum::{Checksum, ChecksumEngine};
use stale_guard::config::Config;
use stale_guard::content;
use stale_guard::kustomize::{self, Node};
use stale_guard::policy::{
    self, Annotation, FailureAction, HeadFacts, MirrorFacts, Mode, Position, Reason, Revision,
    RulePolicy,
};

// ---------------------------------------------------------------------------
// harness
// ---------------------------------------------------------------------------

/// Cases per target: `FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `test` on `cases` values of `strategy`, printing how many ran and
/// how long it took; panics with the minimal failing input on failure.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = ProptestConfig {
        cases,
        // No regression files: this harness owns no directory for them.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let result = runner.run(&strategy, test);
    eprintln!(
        "fuzz target {name}: {cases} cases in {:.2?}",
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("fuzz target {name} failed: {e}");
    }
}

const HEX_LOWER: &str = "0123456789abcdef";

fn hex_string(len: usize, alphabet: &'static str) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    prop::collection::vec(prop::sample::select(chars), len).prop_map(|v| v.into_iter().collect())
}

/// Strings biased towards the interesting: printable, arbitrary unicode,
/// control bytes, and the prefixes the parsers look for.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,80}",
        "\\PC{0,80}",
        "[ -~]{0,120}",
        "(sha1:|sha256:|main@|@|@sha1:|[0-9a-fA-F]{1,70}|\\.|/|\u{0}|\u{feff}|é){0,8}",
    ]
}

// ---------------------------------------------------------------------------
// 1. annotation parsers
// ---------------------------------------------------------------------------

const REVISION_KEY: &str = "stale-guard.io/revision";
const CHECKSUM_KEY: &str = "stale-guard.io/checksum";

#[test]
fn revision_valid_forms_round_trip() {
    let strategy = (
        hex_string(40, "0123456789abcdefABCDEF"),
        0..3u8,
        "[^\u{0}]{1,30}",
    );
    fuzz(
        "Revision::parse valid forms",
        cases(2_000),
        strategy,
        |(hex, form, branch)| {
            let value = match form {
                0 => hex.clone(),
                1 => format!("sha1:{hex}"),
                _ => format!("{branch}@sha1:{hex}"),
            };
            let r = Revision::parse(&value)
                .map_err(|e| TestCaseError::fail(format!("{value:?} refused: {e}")))?;
            prop_assert_eq!(r.to_hex(), hex.to_ascii_lowercase());
            prop_assert_eq!(r.to_string(), hex.to_ascii_lowercase());
            prop_assert_eq!(r.short().to_string(), hex[..7].to_ascii_lowercase());
            prop_assert_eq!(Revision::parse(&r.to_hex()), Ok(r));
            Ok(())
        },
    );
}

/// Valid revisions with one edit (insert, delete, replace a char), and
/// arbitrary text.
fn revision_ish() -> impl Strategy<Value = String> {
    let valid = (hex_string(40, "0123456789abcdefABCDEF"), 0..3u8)
        .prop_map(|(h, f)| match f {
            0 => h,
            1 => format!("sha1:{h}"),
            _ => format!("main@sha1:{h}"),
        })
        .boxed();
    let edited = (
        valid.clone(),
        any::<prop::sample::Index>(),
        any::<char>(),
        0..3u8,
    )
        .prop_map(|(v, at, c, op)| {
            let mut chars: Vec<char> = v.chars().collect();
            let i = at.index(chars.len() + 1);
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => {
                    chars.remove(i);
                }
                _ if i < chars.len() => chars[i] = c,
                _ => chars.push(c),
            }
            chars.into_iter().collect()
        });
    prop_oneof![valid, edited, any_text()]
}

#[test]
fn revision_arbitrary_strings() {
    fuzz(
        "Revision::parse arbitrary",
        cases(3_000),
        revision_ish(),
        |value| {
            if let Ok(r) = Revision::parse(&value) {
                let hex = r.to_hex();
                prop_assert_eq!(hex.len(), 40);
                prop_assert!(hex.bytes().all(|b| HEX_LOWER.as_bytes().contains(&b)));
                // Every accepted form ends with the 40 digits.
                prop_assert!(
                    value.to_ascii_lowercase().ends_with(&hex),
                    "{:?} parsed to {}",
                    value,
                    hex
                );
                prop_assert_eq!(Revision::parse(&hex), Ok(r));
            }
            Ok(())
        },
    );
}

#[test]
fn checksum_valid_round_trips() {
    fuzz(
        "Checksum valid",
        cases(2_000),
        hex_string(64, HEX_LOWER),
        |hex| {
            let text = format!("sha256:{hex}");
            let c: Checksum = text
                .parse()
                .map_err(|e| TestCaseError::fail(format!("{text:?} refused: {e}")))?;
            prop_assert_eq!(c.to_string(), text.clone());
            prop_assert_eq!(format!("{c:?}"), text.clone());
            // Strict: any upper-case letter is refused.
            if hex.bytes().any(|b| b.is_ascii_alphabetic()) {
                let upper = format!("sha256:{}", hex.to_ascii_uppercase());
                prop_assert!(upper.parse::<Checksum>().is_err());
            }
            for bad in [
                format!("SHA256:{hex}"),
                format!(" sha256:{hex}"),
                format!("sha256:{hex}\n"),
                format!("sha256:{}", &hex[1..]),
            ] {
                prop_assert!(bad.parse::<Checksum>().is_err(), "{:?} accepted", bad);
            }
            Ok(())
        },
    );
}

#[test]
fn checksum_arbitrary_strings() {
    let edited = (
        hex_string(64, HEX_LOWER),
        any::<prop::sample::Index>(),
        any::<char>(),
    )
        .prop_map(|(h, at, c)| {
            let mut s: Vec<char> = format!("sha256:{h}").chars().collect();
            let i = at.index(s.len());
            s[i] = c;
            s.into_iter().collect::<String>()
        });
    fuzz(
        "Checksum::from_str arbitrary",
        cases(3_000),
        prop_oneof![edited, any_text()],
        |text| {
            if let Ok(c) = text.parse::<Checksum>() {
                // Strict parsing: the only accepted spelling is the display.
                prop_assert_eq!(c.to_string(), text);
            }
            Ok(())
        },
    );
}

/// Annotation keys: the real ones, near misses of them, and arbitrary text.
fn annotation_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            REVISION_KEY,
            CHECKSUM_KEY,
            "stale-guard",
            "stale-guard.io",
            "STALE-GUARD.IO/REVISION",
            "Stale-Guard.io/Checksum",
            "example.com/revision",
            "checksum",
            "fluxcd.io/checksum",
            "fluxcd",
            "stale-guard.io/",
            "/",
            ".",
            "",
        ])
        .prop_map(str::to_owned),
        1 => any_text(),
    ]
}

fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        revision_ish(),
        hex_string(64, HEX_LOWER).prop_map(|h| format!("sha256:{h}")),
        Just(String::new()),
        any_text(),
    ]
}

#[test]
fn read_annotation_and_near_misses() {
    let strategy = (
        prop::collection::vec((annotation_key(), annotation_value()), 0..8),
        annotation_key(),
    );
    fuzz(
        "read_annotation / is_near_miss",
        cases(2_000),
        strategy,
        |(pairs, key)| {
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let got = policy::read_annotation(refs.iter().copied(), &key, Revision::parse);
            let first = refs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            match (&got, first) {
                (Annotation::Valid(r), Some(v)) => {
                    prop_assert_eq!(Revision::parse(v), Ok(*r));
                }
                (Annotation::Malformed { value, why }, Some(v)) => {
                    // Kept for messages, capped like every echoed value.
                    prop_assert_eq!(value, &stale_guard::echo::value(v));
                    prop_assert!(!v.is_empty());
                    prop_assert_eq!(Revision::parse(v), Err(why.clone()));
                }
                (Annotation::Missing { near_misses }, v) => {
                    prop_assert!(v.is_none_or(str::is_empty), "{:?} not read", v);
                    // Sorted and once each, whatever the order and
                    // repeats of the keys.
                    let mut want: Vec<String> = refs
                        .iter()
                        .map(|(k, _)| *k)
                        .filter(|k| *k != key && policy::is_near_miss(k, &key))
                        .map(str::to_owned)
                        .collect();
                    want.sort_unstable();
                    want.dedup();
                    prop_assert_eq!(near_misses, &want);
                    prop_assert!(near_misses.iter().all(|k| !k.is_empty() && *k != key));
                }
                (other, None) => {
                    return Err(TestCaseError::fail(format!(
                        "{other:?} for a key that is absent"
                    )));
                }
            }
            // is_near_miss on its own: reflexive for non-empty keys,
            // case-insensitive, never true for the empty string.
            for (k, _) in &refs {
                let near = policy::is_near_miss(k, &key);
                if k.is_empty() {
                    prop_assert!(!near);
                }
                if !k.is_empty() && k.eq_ignore_ascii_case(&key) {
                    prop_assert!(near);
                }
            }
            if !key.is_empty() {
                prop_assert!(policy::is_near_miss(&key, &key));
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// 2. the kustomization parser
// ---------------------------------------------------------------------------

const KUSTOMIZATION_FIELDS: [&str; 30] = [
    "resources",
    "components",
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
    "configMapGenerator",
    "secretGenerator",
    "generators",
    "transformers",
    "validators",
    "crds",
    "configurations",
    "openapi",
    "bases",
    "helmCharts",
    "helmChartInflationGenerator",
    "helmGlobals",
    "replacements",
    "namePrefix",
    "images",
    "path",
    "files",
    "envs",
    "env",
    "behavior",
    "name",
    "valuesFile",
    "chartHome",
    "configHome",
    "RESOURCES",
];

fn path_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            ".",
            "..",
            "../base",
            "../../..",
            "/etc/passwd",
            "",
            "cm.yaml",
            "missing/dir",
            "https://github.com/org/repo//path?ref=v1",
            "github.com/org/repo",
            "git@github.com:org/repo.git",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "key=value",
            "a/./b/../c",
            "~",
            "C:\\x",
        ])
        .prop_map(str::to_owned),
        any_text(),
    ]
}

/// A JSON value whose map keys are mostly real kustomization field names.
fn kustomization_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        path_text().prop_map(Value::String),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(KUSTOMIZATION_FIELDS.to_vec()).prop_map(str::to_owned),
        1 => any_text(),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Top level: a mapping of real field names to generated values.
fn kustomization_doc() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop::sample::select(KUSTOMIZATION_FIELDS.to_vec()),
            kustomization_value(),
        ),
        0..8,
    )
    .prop_map(|kv| {
        let mut m: serde_json::Map<String, Value> =
            kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        m.insert(
            "apiVersion".into(),
            json!("kustomize.config.k8s.io/v1beta1"),
        );
        m.insert("kind".into(), json!("Kustomization"));
        Value::Object(m)
    })
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push(k.clone());
            collect_strings(x, out)
        }),
        _ => {}
    }
}

/// Parses and extracts; panics are caught by the runner and shrunk.
fn parse_and_extract(bytes: &[u8]) -> Option<Result<kustomize::Inputs, String>> {
    let node = kustomize::first_document(bytes).ok()?;
    let a = kustomize::kustomization_inputs(&node).map_err(|e| e.0);
    let b = kustomize::kustomization_inputs(&node).map_err(|e| e.0);
    assert_eq!(a, b, "kustomization_inputs is not deterministic");
    Some(a)
}

#[test]
fn kustomization_arbitrary_bytes() {
    let fragments = prop::collection::vec(
        prop::sample::select(vec![
            "resources:",
            "\n- ",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ": ",
            "&a ",
            "*a",
            "<<: *a\n",
            "!!binary ",
            "!!str ",
            "---\n",
            "...\n",
            "'",
            "\"",
            "\\u0000",
            "\t",
            "  ",
            "\n",
            "? ",
            "| \n",
            "> \n",
            "%YAML 1.2\n",
            "#",
            "patches:\n  - path: ",
            "../x",
            "components: ",
            "null",
            "~",
            "0x1F",
            "1e999",
            "-.inf",
            ".nan",
            "é",
            "\u{feff}",
        ]),
        0..40,
    )
    .prop_map(|v| v.concat().into_bytes());
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any_text().prop_map(String::into_bytes),
        fragments,
    ];
    fuzz(
        "kustomize::first_document arbitrary bytes",
        cases(3_000),
        strategy,
        |bytes| {
            let _ = parse_and_extract(&bytes);
            Ok(())
        },
    );
}

#[test]
fn kustomization_generated_documents() {
    fuzz(
        "kustomization_inputs generated documents",
        cases(1_500),
        (kustomization_doc(), any::<bool>()),
        |(doc, as_json)| {
            let text = if as_json {
                serde_json::to_string(&doc).unwrap()
            } else {
                serde_yaml_ng::to_string(&doc).unwrap()
            };
            // serde_json writes DEL, C1 controls, U+FFFE/U+FFFF and the YAML
            // 1.1 line breaks (NEL, U+2028, U+2029) raw; libyaml does not
            // accept them there, so that JSON is not YAML (kustomize's
            // sigs.k8s.io/yaml is YAML 1.1 too).
            let printable = text.chars().all(|c| {
                matches!(c, '\t' | '\n' | '\r' | ' '..='~')
                    || (c >= '\u{a0}'
                        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}'))
            });
            let node = match kustomize::first_document(text.as_bytes()) {
                Ok(node) => node,
                Err(_) if as_json && !printable => return Ok(()),
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "valid YAML refused: {e}\n{text}"
                    )));
                }
            };
            prop_assert!(matches!(node, Node::Map(_)));
            let Some(result) = parse_and_extract(text.as_bytes()) else {
                unreachable!()
            };
            if let Ok(inputs) = result {
                // The parser names only paths that were written.
                let mut written = Vec::new();
                collect_strings(&doc, &mut written);
                for r in &inputs.refs {
                    prop_assert!(
                        written.iter().any(|w| w.contains(r.path.as_str())),
                        "invented path {:?} ({}) from\n{}",
                        r.path,
                        r.field,
                        text
                    );
                    prop_assert!(!r.field.is_empty());
                }
                for r in &inputs.remotes {
                    prop_assert!(written.iter().any(|w| w.contains(r.as_str())));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn kustomization_deep_nesting_is_an_error() {
    for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
        let depth = 10_000;
        let text = if open == "- " {
            (0..depth)
                .map(|i| format!("{}- ", "  ".repeat(i)))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            format!("{}{}", open.repeat(depth), close.repeat(depth))
        };
        let doc = format!("resources: {text}");
        assert!(
            kustomize::first_document(doc.as_bytes()).is_err(),
            "{depth} levels of {open:?} parsed"
        );
    }
    // Billion laughs: aliases must not expand without bound.
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..9 {
        let p = (b'a' + i - 1) as char;
        let c = (b'a' + i) as char;
        laughs.push_str(&format!(
            "{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        ));
    }
    laughs.push_str("resources: *i\n");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = parse_and_extract(laughs.as_bytes()).map(|r| r.is_ok());
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("billion laughs did not finish within 10 s");
    assert!(r.is_none(), "billion laughs parsed: {r:?}");
}

// ---------------------------------------------------------------------------
// 3. the AdmissionReview path
// ---------------------------------------------------------------------------

const REV_A: &str = "9be0d41aa1b2c3d4e5f60718293a4b5c6d7e8f90";
const REV_B: &str = "3f2a1c9ff1e2d3c4b5a697887766554433221100";
const SUM_A: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const SUM_B: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// A valid review, in the shape of tests/webhook_support's builder.
fn base_review() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
            "name": "web",
            "namespace": "prod-apps",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:flux-system:kustomize-controller",
                "groups": ["system:serviceaccounts"]
            },
            "object": {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {
                    "name": "web",
                    "annotations": {REVISION_KEY: REV_A, CHECKSUM_KEY: SUM_A}
                },
                "spec": {"rules": [{"host": "web.example.com"}]}
            },
            "dryRun": false
        }
    })
}

fn config_yaml(mode: &str, staleness: &str, failure: &str) -> String {
    format!(
        "tls: {{ certFile: tls/tls.crt, keyFile: tls/tls.key }}\n\
         mirrorDir: mirror\n\
         sources:\n  - {{ name: gitops, url: \"https://git.example.com/gitops.git\", branch: main }}\n\
         rules:\n  - name: prod\n    match: {{ namespaces: [prod-apps] }}\n    source: gitops\n    overlay: overlays/prod\n    mode: {mode}\n    staleness: {staleness}\n    gracePeriod: 2m\n\
         breakGlass: {{ users: [alice], groups: [\"sre:break-glass\"] }}\n\
         failure: {{ mirrorUnavailable: {failure}, decisionTimeoutAction: {failure} }}\n"
    )
}

/// The configurations the pipeline is driven with: every mode, staleness
/// and failure action.
fn configs() -> Vec<Config> {
    let mut out = Vec::new();
    for mode in ["enforce", "warn", "audit"] {
        for staleness in ["strict", "content"] {
            for failure in ["deny", "allow"] {
                let yaml = config_yaml(mode, staleness, failure);
                out.push(
                    Config::parse(&yaml).unwrap_or_else(|e| panic!("config refused: {e}\n{yaml}")),
                );
            }
        }
    }
    out
}

/// What the server does to a config rule (src/server.rs `rule_policy`).
fn rule_policy(config: &Config, grace: Option<Duration>) -> RulePolicy {
    let rule = &config.rules[0];
    RulePolicy {
        name: rule.name.clone(),
        branch: config.sources[0].branch.clone(),
        mode: rule.mode,
        staleness: rule.staleness,
        grace_period: grace.unwrap_or_else(|| config.grace_period(rule)),
    }
}

/// A JSON path step.
#[derive(Debug, Clone)]
enum Step {
    Key(&'static str),
    Index(usize),
}

/// The fields of a review that mutations target.
fn review_paths() -> Vec<Vec<Step>> {
    use Step::*;
    let p = |s: &[Step]| s.to_vec();
    vec![
        p(&[]),
        p(&[Key("apiVersion")]),
        p(&[Key("kind")]),
        p(&[Key("request")]),
        p(&[Key("request"), Key("uid")]),
        p(&[Key("request"), Key("kind")]),
        p(&[Key("request"), Key("kind"), Key("kind")]),
        p(&[Key("request"), Key("kind"), Key("group")]),
        p(&[Key("request"), Key("name")]),
        p(&[Key("request"), Key("namespace")]),
        p(&[Key("request"), Key("operation")]),
        p(&[Key("request"), Key("subResource")]),
        p(&[Key("request"), Key("dryRun")]),
        p(&[Key("request"), Key("userInfo")]),
        p(&[Key("request"), Key("userInfo"), Key("username")]),
        p(&[Key("request"), Key("userInfo"), Key("groups")]),
        p(&[Key("request"), Key("userInfo"), Key("groups"), Index(0)]),
        p(&[Key("request"), Key("object")]),
        p(&[Key("request"), Key("object"), Key("metadata")]),
        p(&[Key("request"), Key("object"), Key("metadata"), Key("name")]),
        p(&[
            Key("request"),
            Key("object"),
            Key("metadata"),
            Key("annotations"),
        ]),
        p(&[
            Key("request"),
            Key("object"),
            Key("metadata"),
            Key("annotations"),
            Key(REVISION_KEY),
        ]),
        p(&[
            Key("request"),
            Key("object"),
            Key("metadata"),
            Key("annotations"),
            Key(CHECKSUM_KEY),
        ]),
        p(&[Key("request"), Key("object"), Key("spec")]),
    ]
}

fn nested_arrays(depth: usize) -> Value {
    // Built as text and parsed would itself hit the limit; build the value
    // iteratively instead (dropping it is recursive, keep depth moderate).
    let mut v = json!([]);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// Replacement values: wrong types, huge strings, nesting.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        annotation_value().prop_map(Value::String),
        prop::sample::select(vec![
            "CREATE",
            "UPDATE",
            "DELETE",
            "CONNECT",
            "create",
            "",
            "admission.k8s.io/v1",
            "AdmissionReview",
            "admission.k8s.io/v1beta1",
            "status",
            "alice",
            "prod-apps",
        ])
        .prop_map(|s| json!(s)),
        (1usize..200_000).prop_map(|n| json!("x".repeat(n))),
        (1usize..100).prop_map(nested_arrays),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((annotation_key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, Value),
    Remove(usize),
}

fn apply(review: &mut Value, paths: &[Vec<Step>], m: &Mutation) {
    let (idx, new) = match m {
        Mutation::Set(i, v) => (*i, Some(v.clone())),
        Mutation::Remove(i) => (*i, None),
    };
    let path = &paths[idx % paths.len()];
    let Some((last, parents)) = path.split_last() else {
        if let Some(v) = new {
            *review = v;
        }
        return;
    };
    let mut cur = review;
    for step in parents {
        let next = match (step, cur) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(*k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last, cur, new) {
        (Step::Key(k), Value::Object(m), Some(v)) => {
            m.insert((*k).to_owned(), v);
        }
        (Step::Key(k), Value::Object(m), None) => {
            m.remove(*k);
        }
        (Step::Index(i), Value::Array(a), Some(v)) if *i < a.len() => a[*i] = v,
        (Step::Index(i), Value::Array(a), None) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), json_value()).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn revision() -> impl Strategy<Value = Revision> {
    prop_oneof![
        3 => prop::sample::select(vec![REV_A, REV_B]).prop_map(|h| Revision::parse(h).unwrap()),
        1 => any::<[u8; 20]>().prop_map(Revision),
    ]
}

fn checksum_fact() -> impl Strategy<Value = Option<Result<Checksum, String>>> {
    let sum = prop_oneof![
        3 => prop::sample::select(vec![SUM_A, SUM_B]).prop_map(|s| s.parse::<Checksum>().unwrap()),
        1 => any::<[u8; 32]>().prop_map(Checksum),
    ];
    prop::option::of(prop_oneof![
        3 => sum.prop_map(Ok),
        1 => any_text().prop_map(Err),
    ])
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..600).prop_map(Duration::from_secs),
        any::<u64>().prop_map(Duration::from_secs),
        Just(Duration::MAX),
    ]
}

fn mirror_facts() -> impl Strategy<Value = MirrorFacts> {
    let position = prop_oneof![
        Just(Position::Unknown),
        Just(Position::Head),
        Just(Position::OffBranch),
        (any::<u64>(), any::<i64>()).prop_map(|(behind, commit_time)| Position::Ancestor {
            behind,
            commit_time
        }),
        (0u64..5, 1_700_000_000i64..1_800_000_000).prop_map(|(behind, commit_time)| {
            Position::Ancestor {
                behind,
                commit_time,
            }
        }),
    ];
    let head = (
        revision(),
        prop_oneof![any::<i64>(), 1_700_000_000i64..1_800_000_000],
        prop::option::of((revision(), duration())),
    )
        .prop_map(|(commit, commit_time, previous)| HeadFacts {
            commit,
            commit_time,
            previous,
        });
    prop_oneof![
        1 => any_text().prop_map(|why| MirrorFacts::Unavailable { why }),
        6 => (head, position, checksum_fact(), checksum_fact()).prop_map(
            |(head, position, at_revision, at_head)| MirrorFacts::Available {
                head,
                position,
                at_revision,
                at_head,
            }
        ),
    ]
}

/// Reviews with annotations chosen to reach every branch of the decision
/// table, identities that are sometimes break-glass, and some mutations.
fn review_case() -> impl Strategy<Value = Value> {
    let annotations = prop::collection::vec((annotation_key(), annotation_value()), 0..4);
    let valid_rev = prop::sample::select(vec![
        REV_A,
        REV_B,
        "sha1:9BE0D41AA1B2C3D4E5F60718293A4B5C6D7E8F90",
    ]);
    let valid_sum = prop::sample::select(vec![SUM_A, SUM_B]);
    (
        annotations,
        prop::option::weighted(0.9, valid_rev),
        prop::option::weighted(0.9, valid_sum),
        prop::sample::select(vec!["system:serviceaccount:x:y", "bob", "bob", "alice"]),
        prop::sample::select(vec!["system:serviceaccounts", "a", "b", "sre:break-glass"]),
        prop::sample::select(vec![
            "CREATE", "UPDATE", "CREATE", "UPDATE", "DELETE", "CONNECT",
        ]),
        prop_oneof![Just(Vec::new()), prop::collection::vec(mutation(), 1..3)],
    )
        .prop_map(|(extra, rev, sum, user, group, op, mutations)| {
            let mut review = base_review();
            let req = &mut review["request"];
            req["operation"] = json!(op);
            req["userInfo"] = json!({"username": user, "groups": [group]});
            let ann = &mut req["object"]["metadata"]["annotations"];
            *ann = json!({});
            for (k, v) in extra {
                ann[k] = json!(v);
            }
            if let Some(r) = rev {
                ann[REVISION_KEY] = json!(r);
            }
            if let Some(s) = sum {
                ann[CHECKSUM_KEY] = json!(s);
            }
            let paths = review_paths();
            for m in &mutations {
                apply(&mut review, &paths, m);
            }
            review
        })
}

/// Runs the whole pure pipeline on one parsed request and checks the verdict.
fn check_pipeline(
    config: &Config,
    req: &admission::Request,
    facts: &MirrorFacts,
    grace: Option<Duration>,
    budget: Duration,
    reasons: &std::cell::RefCell<std::collections::BTreeMap<&'static str, u32>>,
) -> Result<(), TestCaseError> {
    prop_assert!(!req.uid.is_empty());
    if let Some(why) = admission::out_of_scope(req) {
        let d = policy::Decision::out_of_scope(why);
        prop_assert!(d.allowed);
        prop_assert!(d.message.starts_with("OutOfScope: "));
        check_response(req, &d)?;
        *reasons.borrow_mut().entry("OutOfScope").or_default() += 1;
        return Ok(());
    }
    let _ = admission::matching_rule(config, req);
    let request = admission::request_facts(config, req);
    let rule = rule_policy(config, grace);
    let failure = config.failure.mirror_unavailable;
    let decision = policy::decide(&rule, &request, facts, failure);
    *reasons
        .borrow_mut()
        .entry(decision.reason.as_str())
        .or_default() += 1;
    check_decision(&rule, &request, &decision, failure)?;
    check_response(req, &decision)?;
    let timeout = policy::timed_out(
        &rule,
        &request,
        budget,
        config.failure.decision_timeout_action,
    );
    check_decision(
        &rule,
        &request,
        &timeout,
        config.failure.decision_timeout_action,
    )?;
    prop_assert!(
        timeout.reason == Reason::DecisionTimeout || timeout.reason == Reason::BreakGlass,
        "{:?}",
        timeout.reason
    );
    check_response(req, &timeout)
}

fn check_decision(
    rule: &RulePolicy,
    request: &policy::RequestFacts,
    d: &policy::Decision,
    failure: FailureAction,
) -> Result<(), TestCaseError> {
    let prefix = format!("{}: ", d.reason.as_str());
    prop_assert!(
        d.message.starts_with(&prefix),
        "message {:?} does not start with its reason {:?}",
        d.message,
        d.reason
    );
    prop_assert_eq!(d.mode, Some(rule.mode));
    prop_assert_eq!(d.rule.as_deref(), Some(rule.name.as_str()));
    // The reason the table gave, before break-glass replaced it.
    let table_reason = d.overridden.unwrap_or(d.reason);
    if d.overridden.is_some() {
        prop_assert_eq!(d.reason, Reason::BreakGlass);
        prop_assert!(request.break_glass);
        prop_assert!(!table_reason.allows());
    }
    let infrastructure = matches!(
        table_reason,
        Reason::MirrorUnavailable | Reason::DecisionTimeout
    );
    let softened = infrastructure && failure == FailureAction::Allow;
    let must_deny =
        !table_reason.allows() && rule.mode == Mode::Enforce && !request.break_glass && !softened;
    prop_assert_eq!(
        d.allowed,
        !must_deny,
        "reason {:?} mode {:?} break-glass {} failure {:?}",
        table_reason,
        rule.mode,
        request.break_glass,
        failure
    );
    if !d.allowed {
        prop_assert!(!d.reason.allows() && rule.mode == Mode::Enforce && !request.break_glass);
    }
    prop_assert_eq!(d.is_denial(), !table_reason.allows());
    // Warn mode: a softened denial carries its message as a warning.
    if rule.mode == Mode::Warn && !table_reason.allows() && !request.break_glass && !softened {
        prop_assert_eq!(d.warnings.len(), 1);
        prop_assert!(d.warnings[0].contains(&d.message));
    }
    // The facts the verdict quotes are the request's.
    if let (Some(r), Annotation::Valid(want)) = (d.revision, &request.revision) {
        prop_assert_eq!(r, *want);
    }
    Ok(())
}

fn check_response(req: &admission::Request, d: &policy::Decision) -> Result<(), TestCaseError> {
    let review = admission::response(req, d);
    let text = serde_json::to_string(&review)
        .map_err(|e| TestCaseError::fail(format!("response does not serialise: {e}")))?;
    let v: Value = serde_json::from_str(&text).unwrap();
    let resp = &v["response"];
    prop_assert_eq!(&resp["uid"], &json!(req.uid));
    prop_assert_eq!(&resp["allowed"], &json!(d.allowed));
    prop_assert_eq!(&v["apiVersion"], &json!(admission::API_VERSION));
    prop_assert_eq!(
        &resp["auditAnnotations"]["reason"],
        &json!(d.reason.as_str())
    );
    if !d.allowed {
        prop_assert_eq!(&resp["status"]["message"], &json!(d.message));
        prop_assert_eq!(&resp["status"]["code"], &json!(403));
        prop_assert!(d.message.starts_with(d.reason.as_str()));
    }
    Ok(())
}

#[test]
fn admission_arbitrary_bytes() {
    let valid = serde_json::to_vec(&base_review()).unwrap();
    let edited = (
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(at, bytes)| {
            let mut v = valid.clone();
            let i = at.index(v.len());
            v.splice(i..(i + bytes.len()).min(v.len()), bytes);
            v
        });
    fuzz(
        "admission::parse_review arbitrary bytes",
        cases(3_000),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            any_text().prop_map(String::into_bytes),
            edited,
        ],
        |bytes| {
            match admission::parse_review(&bytes) {
                Ok(req) => prop_assert!(!req.uid.is_empty()),
                Err(e) => prop_assert!(!e.0.is_empty()),
            }
            Ok(())
        },
    );
}

#[test]
fn admission_pipeline_on_mutated_reviews() {
    let configs = configs();
    let strategy = (
        review_case(),
        0..configs.len(),
        mirror_facts(),
        prop::option::of(duration()),
        duration(),
    );
    let parsed = std::cell::Cell::new(0u32);
    let reasons = std::cell::RefCell::new(std::collections::BTreeMap::<&str, u32>::new());
    fuzz(
        "admission pipeline (parse_review..decide..response)",
        cases(2_000),
        strategy,
        |(review, ci, facts, grace, budget)| {
            let body = serde_json::to_vec(&review).unwrap();
            let Ok(req) = admission::parse_review(&body) else {
                return Ok(());
            };
            parsed.set(parsed.get() + 1);
            check_pipeline(&configs[ci], &req, &facts, grace, budget, &reasons)
        },
    );
    eprintln!(
        "  of which parsed and decided: {}; verdicts: {:?}",
        parsed.get(),
        reasons.borrow()
    );
    assert!(parsed.get() > 0);
}

#[test]
fn admission_deep_nesting_is_an_error() {
    // 10,000 levels of arrays, as a whole body and inside the object.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(admission::parse_review(deep.as_bytes()).is_err());
    let unclosed = "[".repeat(100_000);
    assert!(admission::parse_review(unclosed.as_bytes()).is_err());
    let objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    assert!(admission::parse_review(objects.as_bytes()).is_err());
    let base = serde_json::to_string(&base_review()).unwrap();
    // Where the value is built (a bool, the annotations), nesting is refused;
    // where it is skipped without building (spec), serde_json skips it
    // iteratively: accepted, and the stack survives even a million levels.
    for (field, depth, want_ok) in [
        ("\"dryRun\":", 10_000, false),
        ("\"annotations\":", 10_000, false),
        ("\"spec\":", 10_000, true),
        ("\"spec\":", 1_000_000, true),
    ] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = base.replacen(field, &format!("{field}{deep},\"ignored\":"), 1);
        assert_ne!(body, base, "{field} not found");
        let r = admission::parse_review(body.as_bytes());
        assert_eq!(r.is_ok(), want_ok, "{depth} levels at {field}: {r:?}");
    }
    // Huge but flat: accepted.
    let huge = "x".repeat(8 << 20);
    let body = base.replacen("\"web.example.com\"", &format!("\"{huge}\""), 1);
    assert!(admission::parse_review(body.as_bytes()).is_ok());
}

// ---------------------------------------------------------------------------
// 4. the closure walk over generated repositories
// ---------------------------------------------------------------------------

const DIRS: [&str; 8] = [
    "base",
    "overlays/prod",
    "overlays/dev",
    "components/c",
    "shared",
    "a/b/c",
    "overlays/prod/sub",
    "deep/x/y/z",
];

const REF_TARGETS: [&str; 22] = [
    ".",
    "..",
    "../base",
    "../../base",
    "../../..",
    "../../../..",
    "/etc",
    "/",
    "missing",
    "cm.yaml",
    "link",
    "loop-a",
    "../shared",
    "../../shared/cm.yaml",
    "../../components/c",
    "sub",
    "./cm.yaml",
    "a//b",
    "https://github.com/org/repo//base?ref=v1",
    "kustomization.yaml",
    "../overlays/prod",
    "",
];

const LINK_TARGETS: [&str; 14] = [
    ".",
    "..",
    "../../..",
    "../../../../../../etc/passwd",
    "/tmp",
    "/",
    "link",
    "loop-b",
    "loop-a",
    "../base",
    "cm.yaml",
    "missing",
    "../../shared",
    "",
];

#[derive(Debug, Clone)]
enum Op {
    /// A kustomization in DIRS[dir] with entries (field, target).
    Kustomization(usize, Vec<(u8, usize)>),
    /// A plain file (a manifest) at DIRS[dir]/name.
    File(usize, usize),
    /// A symlink DIRS[dir]/name -> target.
    Link(usize, usize, usize),
    /// A file where DIRS[dir] (a directory) is expected.
    FileAsDir(usize),
}

const NAMES: [&str; 6] = [
    "cm.yaml",
    "link",
    "loop-a",
    "loop-b",
    "sub",
    "kustomization.yaml",
];

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DIRS.len();
    prop_oneof![
        4 => (d.clone(), prop::collection::vec((0u8..4, 0..REF_TARGETS.len()), 0..5))
            .prop_map(|(d, e)| Op::Kustomization(d, e)),
        2 => (d.clone(), 0..NAMES.len()).prop_map(|(d, n)| Op::File(d, n)),
        2 => (d.clone(), 0..NAMES.len(), 0..LINK_TARGETS.len())
            .prop_map(|(d, n, t)| Op::Link(d, n, t)),
        1 => d.prop_map(Op::FileAsDir),
    ]
}

fn kustomization_text(entries: &[(u8, usize)]) -> String {
    let mut fields: [Vec<String>; 4] = Default::default();
    for (f, t) in entries {
        fields[*f as usize].push(REF_TARGETS[*t].to_owned());
    }
    let mut y = String::from("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n");
    for (name, list) in ["resources", "components", "patches", "configMapGenerator"]
        .iter()
        .zip(&fields)
    {
        if list.is_empty() {
            continue;
        }
        y.push_str(name);
        y.push_str(":\n");
        for t in list {
            let t = serde_json::to_string(t).unwrap();
            match *name {
                "patches" => y.push_str(&format!("  - path: {t}\n")),
                "configMapGenerator" => y.push_str(&format!("  - name: g\n    files: [{t}]\n")),
                _ => y.push_str(&format!("  - {t}\n")),
            }
        }
    }
    y
}

/// Builds the generated tree under `root`, never writing through a
/// symlink: the trees hold symlinks to `/`, `/tmp` and
/// `../../../../../../etc/passwd`, and these tests run as root in CI. A
/// plain `fs::write` to `kustomization.yaml` after a `Link` of that name
/// once overwrote the machine's `/etc/passwd`.
fn build_tree(root: &Path, ops: &[Op]) {
    const MANIFEST: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
    for op in ops {
        // Conflicts (a file where a directory is, a symlink in the way, and
        // so on) are the point: whatever would need the filesystem to
        // refuse, or to follow a link, is skipped.
        match op {
            Op::Kustomization(d, entries) => {
                if let Some(dir) = real_dir(root, Path::new(DIRS[*d])) {
                    write_new_or_regular(
                        &dir.join("kustomization.yaml"),
                        &kustomization_text(entries),
                    );
                }
            }
            Op::File(d, n) => {
                if let Some(dir) = real_dir(root, Path::new(DIRS[*d])) {
                    write_new_or_regular(&dir.join(NAMES[*n]), MANIFEST);
                }
            }
            Op::Link(d, n, t) => {
                if let Some(dir) = real_dir(root, Path::new(DIRS[*d])) {
                    let _ = std::os::unix::fs::symlink(LINK_TARGETS[*t], dir.join(NAMES[*n]));
                }
            }
            Op::FileAsDir(d) => {
                let rel = Path::new(DIRS[*d]);
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                    continue;
                };
                if let Some(dir) = real_dir(root, parent) {
                    write_new_or_regular(&dir.join(name), "not a directory\n");
                }
            }
        }
    }
}

/// `root/rel` as real directories, created one component at a time; None
/// when a component is a symlink or a file (never followed).
fn real_dir(root: &Path, rel: &Path) -> Option<std::path::PathBuf> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => p.push(n),
            std::path::Component::CurDir => continue,
            _ => return None,
        }
        match std::fs::symlink_metadata(&p) {
            // symlink_metadata does not follow: a link to a directory is
            // not a directory here.
            Ok(m) if m.is_dir() => {}
            Ok(_) => return None,
            Err(_) => std::fs::create_dir(&p).ok()?,
        }
    }
    Some(p)
}

/// Writes `path` if nothing is there or a regular file is; never through a
/// symlink.
fn write_new_or_regular(path: &Path, text: &str) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => {}
        _ => {
            let _ = std::fs::write(path, text);
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Fuzz")
        .env("GIT_AUTHOR_EMAIL", "fuzz@example.com")
        .env("GIT_COMMITTER_NAME", "Fuzz")
        .env("GIT_COMMITTER_EMAIL", "fuzz@example.com")
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .args(["-c", "commit.gpgsign=false", "-c", "core.symlinks=true"])
        .args(["-c", "core.autocrlf=false", "-c", "gc.auto=0"])
        .args(args)
        .output()
        .expect("spawn git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The checksum (or error) of `overlay` at HEAD, with a fresh engine, as text.
fn checksum_once(dir: &Path, overlay: &str) -> Result<String, String> {
    let engine = ChecksumEngine::open(dir).map_err(|e| format!("open: {e}"))?;
    let commit = engine
        .resolve_commit("HEAD")
        .map_err(|e| format!("resolve: {e}"))?;
    match engine.checksum(commit, overlay) {
        Ok(sum) => {
            assert_eq!(sum.commit, commit);
            let names: Vec<String> = sum
                .entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.name()).into_owned())
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "entries are not sorted");
            assert_eq!(
                stale_guard::checksum::combine(&sum.entries),
                sum.checksum,
                "checksum is not the combination of its entries"
            );
            Ok(format!("{} {names:?}", sum.checksum))
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            Err(msg)
        }
    }
}

/// Runs `f` in a thread; fails if it takes longer than `budget` or panics.
fn within<T: Send + 'static>(
    budget: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(budget) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(p)) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
        Err(_) => Err(format!("did not finish within {budget:?}")),
    }
}

#[test]
fn closure_walk_over_generated_repositories() {
    let default = 40;
    let n = cases(default * 100) / 100;
    let overlays = prop::sample::select(vec![
        "overlays/prod",
        "overlays/prod",
        "overlays/prod",
        "overlays/dev",
        "base",
        ".",
        "a/b/c",
        "overlays/prod/sub",
        "deep/x/y/z",
        "overlays/prod/link",
        "../x",
        "/abs",
        "missing",
    ]);
    let ok = std::cell::Cell::new(0u32);
    fuzz(
        "ChecksumEngine::checksum generated repositories",
        n.max(default),
        (prop::collection::vec(op(), 0..10), overlays),
        |(ops, overlay)| {
            let tmp = tempfile::Builder::new()
                .prefix("sg-fuzz-")
                .tempdir()
                .unwrap();
            let root = tmp.path().join("repo");
            std::fs::create_dir_all(&root).unwrap();
            git(&root, &["init", "-q", "-b", "main"]);
            // A sane seed (an overlay over a base, a manifest), then the
            // generated operations on top of it.
            let mut all = vec![
                Op::File(0, 0),
                Op::Kustomization(0, vec![(0, 9)]),
                Op::Kustomization(1, vec![(0, 3)]),
                Op::File(4, 0),
            ];
            all.extend(ops.iter().cloned());
            build_tree(&root, &all);
            git(&root, &["add", "-A"]);
            git(&root, &["commit", "-q", "--allow-empty", "-m", "fuzz"]);
            let mut results = Vec::new();
            for _ in 0..2 {
                let dir = root.clone();
                let o = overlay.to_owned();
                let r = within(Duration::from_secs(10), move || {
                    checksum_once(&dir, o.as_str())
                })
                .map_err(|e| TestCaseError::fail(format!("overlay {overlay:?}: {e}")))?;
                results.push(r);
            }
            prop_assert_eq!(&results[0], &results[1], "not deterministic");
            if std::env::var_os("FUZZ_VERBOSE").is_some() {
                eprintln!("{overlay} {ops:?} -> {:?}", results[0]);
            }
            if results[0].is_ok() {
                ok.set(ok.get() + 1);
            }
            if overlay.starts_with('/') || overlay.starts_with("..") {
                prop_assert!(results[0].is_err());
            }
            Ok(())
        },
    );
    eprintln!("  of which checksummed without error: {}", ok.get());
}

/// Regression: the generated trees once wrote a kustomization through a
/// symlink named `kustomization.yaml` and overwrote `/etc/passwd` (the
/// tests run as root in CI). Writes and directory creation never follow a
/// link; here the links point inside the tree, so the test itself is safe.
#[test]
fn build_tree_never_writes_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ops = [
        // base/cm.yaml, then base/kustomization.yaml -> cm.yaml, then a
        // kustomization written "to" base/kustomization.yaml.
        Op::File(0, 0),
        Op::Link(0, 5, 10),
        Op::Kustomization(0, vec![(0, 0)]),
        // overlays/prod/sub -> .., then a kustomization in
        // overlays/prod/sub (which would land in overlays/).
        Op::Link(1, 4, 1),
        Op::Kustomization(6, vec![(0, 0)]),
    ];
    build_tree(root, &ops);
    let cm = std::fs::read_to_string(root.join("base/cm.yaml")).unwrap();
    assert!(cm.starts_with("apiVersion: v1\nkind: ConfigMap"), "{cm}");
    assert!(!root.join("overlays/kustomization.yaml").exists());
    let link = std::fs::symlink_metadata(root.join("base/kustomization.yaml")).unwrap();
    assert!(link.file_type().is_symlink());
}

// ---------------------------------------------------------------------------
// 5. content comparison
// ---------------------------------------------------------------------------

/// Keys with meaning to the comparison (names pair list elements; `data`,
/// `stringData` in a Secret; quantity paths), and a few without.
const CONTENT_KEYS: [&str; 16] = [
    "name",
    "spec",
    "template",
    "containers",
    "resources",
    "requests",
    "cpu",
    "data",
    "stringData",
    "status",
    "metadata",
    "env",
    "value",
    "a",
    "b",
    "fluxcd.io/checksum",
];

/// Scalars that compare in interesting ways: quantities, numbers as
/// strings, base64, names shared by list elements.
fn content_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(|n| json!(n)),
        prop::sample::select(vec![0.5, 1.0, -0.0, 1e3, 1.5e9]).prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "500m",
            "0.5",
            "1",
            "1.0",
            "1Gi",
            "1024Mi",
            "1e3",
            "1k",
            "czNjcmV0",
            "s3cret",
            "czNj\ncmV0",
            "web",
            "sidecar",
            "",
            "1.10",
            "1.1",
            "1E",
            "-1",
        ])
        .prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ]
}

/// Objects shaped like Kubernetes objects (a known kind at the top, so
/// quantity and Secret rules apply) holding generated values.
fn content_object() -> impl Strategy<Value = Value> {
    let value = content_scalar().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            // Lists of maps, often named: the pairing code's input.
            prop::collection::vec(
                prop::collection::btree_map(
                    prop::sample::select(CONTENT_KEYS.to_vec()),
                    inner.clone(),
                    0..4
                ),
                0..5
            )
            .prop_map(|maps| Value::Array(
                maps.into_iter()
                    .map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
                    .collect()
            )),
            prop::collection::btree_map(prop::sample::select(CONTENT_KEYS.to_vec()), inner, 0..5)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    });
    let kind = prop::sample::select(vec![
        ("v1", "Secret"),
        ("apps/v1", "Deployment"),
        ("v1", "Pod"),
        ("v1", "ConfigMap"),
        ("example.com/v1", "Widget"),
    ]);
    (
        kind,
        prop::collection::btree_map(prop::sample::select(CONTENT_KEYS.to_vec()), value, 0..5),
    )
        .prop_map(|((api, kind), fields)| {
            let mut o: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            o.insert("apiVersion".into(), json!(api));
            o.insert("kind".into(), json!(kind));
            Value::Object(o)
        })
}

/// `v` with map keys and list-of-maps elements dropped, each with
/// probability 1/3, by a seeded generator: a subset of `v` in the sense of
/// the comparison (lists of other values keep every element, in order).
fn subset_of(v: &Value, seed: &mut u64) -> Value {
    let mut coin = || {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 33).is_multiple_of(3)
    };
    match v {
        Value::Object(m) => {
            let kept: Vec<(&String, &Value)> = m.iter().filter(|_| !coin()).collect();
            Value::Object(
                kept.into_iter()
                    .map(|(k, x)| (k.clone(), subset_of(x, seed)))
                    .collect(),
            )
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_object) => {
            let kept: Vec<&Value> = a.iter().filter(|_| !coin()).collect();
            Value::Array(kept.into_iter().map(|x| subset_of(x, seed)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| subset_of(x, seed)).collect()),
        other => other.clone(),
    }
}

fn check_difference(d: &content::Difference) -> Result<(), TestCaseError> {
    let text = d.to_string();
    prop_assert!(!d.path.is_empty());
    prop_assert!(text.starts_with(&format!("{}: ", d.path)), "{text}");
    for shown in d.found.iter().chain([&d.rendered]) {
        // Values are cut with echo (the cut keeps 120 characters and a
        // marker); a Secret's are replaced by their size.
        prop_assert!(
            shown.chars().count() <= stale_guard::echo::CUT_ABOVE,
            "{shown}"
        );
    }
    Ok(())
}

#[test]
fn content_compare_arbitrary_pairs() {
    fuzz(
        "content::compare arbitrary pairs",
        cases(1_500),
        (content_object(), content_object()),
        |(rendered, object)| {
            let got = content::compare(&rendered, &object);
            prop_assert_eq!(content::matches(&rendered, &object), got.is_ok());
            prop_assert_eq!(&content::compare(&rendered, &object), &got, "deterministic");
            if let Err(d) = &got {
                check_difference(d)?;
            }
            Ok(())
        },
    );
}

#[test]
fn content_an_object_matches_itself_and_its_subsets() {
    fuzz(
        "content::compare of an object with itself and its subsets",
        cases(1_500),
        (content_object(), any::<u64>()),
        |(object, mut seed)| {
            prop_assert_eq!(content::compare(&object, &object), Ok(()));
            let mut subset = subset_of(&object, &mut seed);
            // Keep the identity: the kind decides the quantity and Secret rules.
            for key in ["apiVersion", "kind"] {
                subset[key] = object[key].clone();
            }
            let got = content::compare(&subset, &object);
            prop_assert_eq!(got, Ok(()), "subset {}", subset);
            Ok(())
        },
    );
}

/// The cheap paths of content verification agree with the comparison: the
/// literal check read from the review's bytes says true only when
/// `compare` accepts (and it does for an object and its own subsets), and
/// the object built only where the rendering sets fields compares as the
/// whole one does.
#[test]
fn content_cheap_paths_agree_with_compare() {
    fuzz(
        "content::review_contains and review_object against compare",
        cases(1_500),
        (content_object(), content_object(), any::<u64>()),
        |(rendered, object, mut seed)| {
            let body = |o: &Value| {
                serde_json::to_vec(&serde_json::json!({"request": {"uid": "u", "object": o}}))
                    .unwrap()
            };
            for (r, o) in [
                (&rendered, &object),
                (&object, &object),
                (&subset_of(&object, &mut seed), &object),
            ] {
                let literal = content::review_contains(&body(o), r);
                let careful = content::compare(r, o);
                prop_assert!(
                    !literal || careful.is_ok(),
                    "literal check accepted what compare refuses: {:?}\nrendered {}\nobject {}",
                    careful,
                    r,
                    o
                );
                let pruned = content::review_object(&body(o), &[r])
                    .map_err(TestCaseError::fail)?
                    .expect("the body has an object");
                prop_assert_eq!(content::compare(r, &pruned), careful, "pruned vs whole");
            }
            prop_assert!(content::review_contains(&body(&object), &object));
            Ok(())
        },
    );
}

/// Object metadata with string annotations and labels drawn from a few
/// keys and values, so that renderings and objects often agree.
fn content_metadata() -> impl Strategy<Value = Value> {
    let strings = |values: Vec<Value>| {
        prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "x/y", "fluxcd.io/checksum"]),
            prop::sample::select(values),
            0..3,
        )
    };
    let annotations = strings(vec![json!("1"), json!("2"), json!("v")]);
    // Labels that are not strings are skipped rather than refused.
    let labels = strings(vec![json!("1"), json!("v"), json!(null), json!(7)]);
    (annotations, labels, any::<bool>(), any::<bool>()).prop_map(
        |(annotations, labels, with_annotations, with_labels)| {
            let mut m = json!({"name": "n"});
            if with_annotations {
                m["annotations"] = json!(annotations);
            }
            if with_labels {
                m["labels"] = json!(labels);
            }
            m
        },
    )
}

/// A rendering to check the object against, fixed, and what objects it
/// was found in.
struct Fixed<'v>(&'v Value, &'v content::Seen);

impl admission::Expectation for Fixed<'_> {
    fn rendered(&self) -> &Value {
        self.0
    }

    fn seen(&self) -> Option<&content::Seen> {
        Some(self.1)
    }
}

/// The one-pass parse of a review (the object checked while it is read)
/// reads the request as the plain parse does, and its check says what
/// the literal check on the bytes says: true only when `compare` accepts.
#[test]
fn content_one_pass_parse_agrees_with_the_literal_check() {
    // Cases where both parses read a request (not refused): the property
    // must not hold only because every body is refused.
    let parsed = std::sync::atomic::AtomicUsize::new(0);
    fuzz(
        "admission::parse_review_checking against parse_review and review_contains",
        cases(1_500),
        (
            content_object(),
            content_object(),
            content_metadata(),
            content_metadata(),
            any::<u64>(),
        ),
        |(mut rendered, mut object, rendered_meta, object_meta, mut seed)| {
            rendered["metadata"] = rendered_meta;
            object["metadata"] = object_meta;
            // In the API server's field order: the object after the fields
            // that pick what it is checked against.
            let review = |o: &Value| {
                format!(
                    r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
                    "request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"X"}},
                    "name":"n","operation":"CREATE","object":{o},
                    "oldObject":{{"metadata":{{"name":"old"}}}}}}}}"#
                )
                .into_bytes()
            };
            // What the rendering was found in is shared by the reviews
            // of one rendering: each review is read twice (the second may
            // not walk what the first found), and the rendering itself,
            // read first, must not make the object look contained.
            let subset = subset_of(&object, &mut seed);
            // A fresh one for the object read twice against the rendering:
            // what is remembered of a review that does not contain it.
            let seen = [&rendered, &object, &subset, &rendered].map(content::Seen::new);
            for (r, o, seen) in [
                (&rendered, &rendered, &seen[0]),
                (&rendered, &object, &seen[0]),
                (&object, &object, &seen[1]),
                (&subset, &object, &seen[2]),
                (&subset, &object, &seen[2]),
                (&rendered, &object, &seen[3]),
                (&rendered, &object, &seen[3]),
            ] {
                let body = review(o);
                let plain = admission::parse_review(&body);
                let checked = admission::parse_review_checking(&body, |_| Some(Fixed(r, seen)));
                let (plain, (checked, pre)) = match (plain, checked) {
                    (Ok(plain), Ok(checked)) => {
                        parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        (plain, checked)
                    }
                    (Err(_), Err(_)) => continue,
                    (plain, checked) => {
                        return Err(TestCaseError::fail(format!(
                            "one parse failed: plain {:?}, checked {:?}",
                            plain.err(),
                            checked.err()
                        )));
                    }
                };
                prop_assert_eq!(&plain.object, &checked.object, "metadata read the same");
                prop_assert_eq!(&plain.uid, &checked.uid);
                let pre = pre.expect("picked");
                let literal = content::review_contains(&body, r);
                // A rendered label that is neither a string nor null (never
                // seen) may be left to the careful path; otherwise the two
                // cheap checks agree.
                let odd_label = r["metadata"]["labels"]
                    .as_object()
                    .is_some_and(|m| m.values().any(|v| !v.is_string() && !v.is_null()));
                if odd_label {
                    prop_assert!(!pre.contains || literal);
                } else {
                    prop_assert_eq!(pre.contains, literal, "rendered {}\nobject {}", r, o);
                }
                prop_assert!(!pre.contains || content::compare(r, o).is_ok());
            }
            Ok(())
        },
    );
    let parsed = parsed.into_inner();
    assert!(parsed >= 2_500, "only {parsed} of 7,500 bodies were read");
}
