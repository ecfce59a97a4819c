//! The annotation parsers: `Revision::parse`, `Checksum` from `str`,
//! `policy::read_annotation` and `policy::is_near_miss`.
//!
//! Input (lossy UTF-8, so readable seeds): the first line is the key looked
//! up; every further line is an annotation `key=value` (split at the first
//! `=`; a line without one is a key with an empty value). Every line, and
//! every value, is also parsed as a revision and as a checksum on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_guard::checksum::Checksum;
use stale_guard::policy::{self, Annotation, Revision};

fn check_revision(s: &str) {
    match Revision::parse(s) {
        Ok(r) => {
            let hex = r.to_hex();
            assert_eq!(hex.len(), 40);
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(r.to_string(), hex);
            assert_eq!(r.short().to_string(), hex[..7]);
            assert_eq!(Revision::parse(&hex), Ok(r));
            assert_eq!(Revision::parse(&format!("sha1:{hex}")), Ok(r));
            assert_eq!(Revision::parse(&format!("main@sha1:{hex}")), Ok(r));
            // The 40 digits are the end of the value, in any case.
            assert!(s.len() >= 40);
            assert!(s.is_char_boundary(s.len() - 40));
            assert_eq!(s[s.len() - 40..].to_ascii_lowercase(), hex);
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

fn check_checksum(s: &str) {
    match s.parse::<Checksum>() {
        Ok(c) => {
            // Strict: the only accepted spelling is the canonical one.
            assert_eq!(c.to_string(), s);
            assert_eq!(c.to_string().parse::<Checksum>(), Ok(c));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let key = lines.next().unwrap_or_default();
    let pairs: Vec<(&str, &str)> = lines
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .collect();

    check_revision(key);
    check_checksum(key);
    for (k, v) in &pairs {
        check_revision(k);
        check_revision(v);
        check_checksum(k);
        check_checksum(v);
    }

    // read_annotation with both parsers.
    let first = pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let got = policy::read_annotation(pairs.iter().copied(), key, Revision::parse);
    match (&got, first) {
        (Annotation::Valid(r), Some(v)) => assert_eq!(Revision::parse(v), Ok(*r)),
        (Annotation::Malformed { value, why }, Some(v)) => {
            // Stored capped, as every echoed value (src/echo.rs).
            assert_eq!(value, &stale_guard::echo::value(v));
            assert!(!v.is_empty());
            assert_eq!(Revision::parse(v), Err(why.clone()));
        }
        (Annotation::Missing { near_misses }, v) => {
            assert!(v.is_none_or(str::is_empty), "{v:?} not read");
            // Sorted and once each, whatever the order and repeats.
            let mut want: Vec<&str> = pairs
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| *k != key && policy::is_near_miss(k, key))
                .collect();
            want.sort_unstable();
            want.dedup();
            assert_eq!(near_misses, &want);
        }
        (other, None) => panic!("{other:?} for a key that is absent"),
    }
    let sum = policy::read_annotation(pairs.iter().copied(), key, |v| {
        v.parse::<Checksum>().map_err(|e| e.to_string())
    });
    match (&sum, first) {
        (Annotation::Valid(c), Some(v)) => assert_eq!(c.to_string(), v),
        (Annotation::Malformed { value, .. }, Some(v)) => {
            // Stored capped, as every echoed value (src/echo.rs).
            assert_eq!(value, &stale_guard::echo::value(v));
            assert!(v.parse::<Checksum>().is_err());
        }
        (Annotation::Missing { .. }, v) => assert!(v.is_none_or(str::is_empty)),
        (other, None) => panic!("{other:?} for a key that is absent"),
    }

    // is_near_miss: never for the empty string, reflexive otherwise,
    // case-insensitive.
    for (k, _) in &pairs {
        let near = policy::is_near_miss(k, key);
        if k.is_empty() {
            assert!(!near);
        } else if k.eq_ignore_ascii_case(key) {
            assert!(near);
        }
        let _ = policy::is_near_miss(key, k);
    }
    if !key.is_empty() {
        assert!(policy::is_near_miss(key, key));
    }
});
