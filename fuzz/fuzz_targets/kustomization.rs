//! The kustomization parser: `kustomize::first_document` then
//! `kustomize::kustomization_inputs` on arbitrary bytes (what the closure
//! walk does with every `kustomization.yaml` blob it reads), plus
//! `all_documents`, `is_inline_yaml` and `plugin_identity`.
//!
//! Asserts: no panic, no hang (libFuzzer's `-timeout`), errors carry a
//! message, extraction is deterministic, and every reference the inputs
//! name came from the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_guard::kustomize::{self, Node};

fn collect_strings(n: &Node, out: &mut Vec<String>) {
    match n {
        Node::String(s) | Node::Number(s) => out.push(s.clone()),
        Node::Bool(b) => out.push(b.to_string()),
        Node::Seq(v) => v.iter().for_each(|x| collect_strings(x, out)),
        Node::Map(m) => m.iter().for_each(|(k, x)| {
            out.push(k.clone());
            collect_strings(x, out)
        }),
        Node::Null => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let first = kustomize::first_document(data);
    let all = kustomize::all_documents(data);
    if let (Ok(first), Ok(all)) = (&first, &all)
        && let Some(head) = all.first()
    {
        assert_eq!(first, head, "first_document is not all_documents[0]");
    }
    let node = match first {
        Ok(node) => node,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    let a = kustomize::kustomization_inputs(&node);
    let b = kustomize::kustomization_inputs(&node);
    assert_eq!(a, b, "kustomization_inputs is not deterministic");
    let _ = kustomize::plugin_identity(&node);
    match a {
        Ok(inputs) => {
            let mut strings = Vec::new();
            collect_strings(&node, &mut strings);
            for r in &inputs.refs {
                let _ = kustomize::is_remote_dir(&r.path);
                let _ = kustomize::is_remote_file(&r.path);
            }
            for remote in &inputs.remotes {
                assert!(
                    strings.iter().any(|s| s.contains(remote.as_str())),
                    "remote {remote:?} is not in the document"
                );
            }
            for chart in &inputs.helm_charts {
                let _ = chart.chart_dir();
                let _ = chart.remote_ref();
            }
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    // Strings of the document are what the walk tests for inline YAML.
    if data.len() < 4096
        && let Ok(text) = std::str::from_utf8(data)
    {
        let _ = kustomize::is_inline_yaml(text);
    }
});
