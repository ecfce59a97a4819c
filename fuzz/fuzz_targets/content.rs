//! The content comparison: `content::compare` and `content::matches` on
//! two JSON documents read one after the other from the input (the
//! rendering, then the object; any whitespace between them).
//!
//! Asserts: no panic, no hang (libFuzzer's `-timeout`), each document
//! matches itself, `matches` agrees with `compare`, the result is
//! deterministic, and a difference reads `<path>: ...` with its values
//! cut to echo's bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stale_guard::content;

fn check(rendered: &Value, object: &Value) {
    let got = content::compare(rendered, object);
    assert_eq!(content::matches(rendered, object), got.is_ok());
    assert_eq!(content::compare(rendered, object), got, "deterministic");
    if let Err(d) = got {
        let text = d.to_string();
        assert!(!d.path.is_empty());
        assert!(text.starts_with(&format!("{}: ", d.path)), "{text}");
        for shown in d.found.iter().chain([&d.rendered]) {
            assert!(
                shown.chars().count() <= stale_guard::echo::CUT_ABOVE,
                "{shown}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut docs = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let Some(Ok(rendered)) = docs.next() else {
        return;
    };
    assert_eq!(content::compare(&rendered, &rendered), Ok(()));
    let Some(Ok(object)) = docs.next() else {
        return;
    };
    assert_eq!(content::compare(&object, &object), Ok(()));
    check(&rendered, &object);
    check(&object, &rendered);
});
