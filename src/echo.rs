//! Text from outside (requests, repositories, git) echoed back, capped.
//!
//! Every value a message quotes from a request or a repository (annotation
//! values and keys, paths, symlink targets, kustomization parse errors,
//! git's stderr) is formatted through [`Capped`] or [`Quoted`], lists of
//! such values through [`list`], and every finished message (a denial's
//! `status.message`, a warning, the audit line's detail, a cached checksum
//! error, a 400 body) through [`message`]. A 7 MiB annotation value or a
//! 100 MB symlink target then costs a response and a log line of at most a
//! few KiB, not a copy of the attack per review.

use std::fmt::{self, Write as _};

/// Characters of a value kept: the first [`HEAD_CHARS`] and the last
/// [`TAIL_CHARS`] (the end of a path names the file, the end of a parse
/// error its line and column).
pub const VALUE_CHARS: usize = HEAD_CHARS + TAIL_CHARS;
pub const HEAD_CHARS: usize = 90;
pub const TAIL_CHARS: usize = 30;
/// A value is cut only when longer than this, so that a value already cut
/// (at most [`VALUE_CHARS`] plus a marker of at most 28 characters) is
/// never cut again: capping is idempotent.
pub const CUT_ABOVE: usize = VALUE_CHARS + 40;
/// Items of a list shown before "and N more".
pub const LIST_ITEMS: usize = 5;
/// Bytes of a whole message.
pub const MESSAGE_BYTES: usize = 2048;

/// Where a value splits: `None` when it is short enough to keep whole,
/// else the byte offsets where the head ends and the tail starts.
fn split(s: &str) -> Option<(usize, usize)> {
    // Cheap for the common case: a short value has few bytes.
    if s.len() <= CUT_ABOVE {
        return None;
    }
    let mut chars = s.char_indices();
    let head_end = chars.nth(HEAD_CHARS).map(|(i, _)| i)?;
    // More than CUT_ABOVE characters, or keep it whole.
    s[head_end..].chars().nth(CUT_ABOVE - HEAD_CHARS)?;
    let tail_start = s
        .char_indices()
        .rev()
        .nth(TAIL_CHARS - 1)
        .map_or(head_end, |(i, _)| i);
    Some((head_end, tail_start))
}

/// Displays a value whole when short, else its first [`HEAD_CHARS`] and
/// last [`TAIL_CHARS`] characters around `…(N bytes)…`, N its full length.
#[derive(Clone, Copy)]
pub struct Capped<'a>(pub &'a str);

impl fmt::Display for Capped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match split(self.0) {
            None => f.write_str(self.0),
            Some((head, tail)) => write!(
                f,
                "{}…({} bytes)…{}",
                &self.0[..head],
                self.0.len(),
                &self.0[tail..]
            ),
        }
    }
}

/// Like [`Capped`], written as a quoted, escaped string (Rust's `{:?}`),
/// the marker inside the quotes.
#[derive(Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match split(self.0) {
            None => write!(f, "{:?}", self.0),
            Some((head, tail)) => {
                let inner = |s: &str| {
                    let quoted = format!("{s:?}");
                    quoted[1..quoted.len() - 1].to_owned()
                };
                write!(
                    f,
                    "\"{}…({} bytes)…{}\"",
                    inner(&self.0[..head]),
                    self.0.len(),
                    inner(&self.0[tail..])
                )
            }
        }
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A value as an owned, capped string.
pub fn value(s: &str) -> String {
    Capped(s).to_string()
}

/// Bytes (a path, a symlink target) as capped text: invalid UTF-8 is
/// replaced, and only the bytes that can be shown are decoded.
pub fn bytes(b: &[u8]) -> String {
    // Four bytes per character at most: beyond this nothing in the middle
    // is shown, so it is not decoded.
    let room = CUT_ABOVE * 4;
    if b.len() <= room * 2 {
        let text = String::from_utf8_lossy(b);
        return match split(&text) {
            None => text.into_owned(),
            Some((head, tail)) => {
                format!("{}…({} bytes)…{}", &text[..head], b.len(), &text[tail..])
            }
        };
    }
    let head = String::from_utf8_lossy(&b[..room]);
    let tail = String::from_utf8_lossy(&b[b.len() - room..]);
    let head_end = head
        .char_indices()
        .nth(HEAD_CHARS)
        .map_or(head.len(), |(i, _)| i);
    let tail_start = tail
        .char_indices()
        .rev()
        .nth(TAIL_CHARS - 1)
        .map_or(0, |(i, _)| i);
    format!(
        "{}…({} bytes)…{}",
        &head[..head_end],
        b.len(),
        &tail[tail_start..]
    )
}

/// The first [`LIST_ITEMS`] items joined by `, `, then `and N more`.
pub fn list<T: fmt::Display>(items: impl ExactSizeIterator<Item = T>) -> String {
    let total = items.len();
    let mut out = String::new();
    for (i, item) in items.take(LIST_ITEMS).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    if total > LIST_ITEMS {
        let _ = write!(out, " and {} more", total - LIST_ITEMS);
    }
    out
}

/// A whole message bounded to [`MESSAGE_BYTES`]: cut at a character
/// boundary, ending `…(N bytes)`. A short message is returned as is,
/// without copying.
pub fn message(mut s: String) -> String {
    if s.len() <= MESSAGE_BYTES {
        return s;
    }
    let total = s.len();
    let mut end = MESSAGE_BYTES - 32;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    let _ = write!(s, "…({total} bytes)");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_kept_whole() {
        assert_eq!(value("abc"), "abc");
        let edge = "x".repeat(CUT_ABOVE);
        assert_eq!(value(&edge), edge);
        assert_eq!(Quoted("a\"b").to_string(), "\"a\\\"b\"");
        assert_eq!(bytes(b"dir/file.yaml"), "dir/file.yaml");
    }

    #[test]
    fn long_values_keep_head_and_tail_and_say_the_size() {
        let long = format!("{}{}", "a".repeat(7 << 20), "END");
        let cut = value(&long);
        assert!(cut.starts_with(&"a".repeat(HEAD_CHARS)), "{cut}");
        assert!(cut.contains(&format!("…({} bytes)…", long.len())), "{cut}");
        assert!(cut.ends_with("aEND"), "{cut}");
        assert!(cut.chars().count() <= CUT_ABOVE, "{cut}");
        // Idempotent: a cut value is not cut again.
        assert_eq!(value(&cut), cut);
        assert_eq!(bytes(long.as_bytes()), cut);
        let quoted = Quoted(&long).to_string();
        assert!(quoted.starts_with("\"aaa") && quoted.ends_with("aEND\""));
        assert!(quoted.len() < 200, "{quoted}");
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let long = "é🙂".repeat(100_000);
        let cut = value(&long);
        assert!(cut.chars().count() <= CUT_ABOVE);
        assert_eq!(bytes(long.as_bytes()), cut);
        // Invalid UTF-8 is replaced, never a panic.
        let mut raw = vec![0xffu8; 3 << 20];
        raw.extend_from_slice(b"tail");
        let shown = bytes(&raw);
        assert!(shown.ends_with("tail") && shown.contains("(3145732 bytes)"));
        let m = message("ü".repeat(5000));
        assert!(
            m.len() <= MESSAGE_BYTES && m.ends_with("…(10000 bytes)"),
            "{m}"
        );
    }

    /// The decision table quotes request values and checksum errors: each
    /// verdict's message and warning stay bounded whatever they quote.
    #[test]
    fn verdicts_quoting_hostile_text_are_bounded() {
        use crate::checksum::Checksum;
        use crate::policy::*;
        let rule = RulePolicy {
            name: "r".into(),
            branch: "main".into(),
            mode: Mode::Warn,
            staleness: Staleness::Strict,
            grace_period: std::time::Duration::ZERO,
        };
        let key = "stale-guard.io/revision";
        let huge = "7".repeat(7 << 20);
        let keys: Vec<String> = (0..50_000)
            .map(|i| format!("team{i}.example.com/revision"))
            .collect();
        let head = Revision([0x9b; 20]);
        let valid = RequestFacts {
            revision: Annotation::Valid(head),
            checksum: Annotation::Valid(Checksum([1; 32])),
            break_glass: false,
            branch: None,
            claimed_by: Default::default(),
        };
        let cases = [
            RequestFacts {
                revision: read_annotation([(key, huge.as_str())], key, Revision::parse),
                ..valid.clone()
            },
            RequestFacts {
                revision: read_annotation(
                    keys.iter().map(|k| (k.as_str(), "x")),
                    key,
                    Revision::parse,
                ),
                ..valid.clone()
            },
            RequestFacts {
                branch: Some("b".repeat(3 << 20)),
                ..valid.clone()
            },
            valid.clone(),
        ];
        let facts = MirrorFacts::Available {
            head: HeadFacts {
                commit: head,
                commit_time: 0,
                previous: None,
            },
            position: Position::Head,
            at_revision: Some(Err(format!("not found: {}", "p".repeat(5 << 20)))),
            at_head: None,
        };
        for (request, says) in
            cases
                .iter()
                .zip(["(7340032 bytes)", "and 49995 more", "(3145728 bytes)", "…("])
        {
            let d = decide(&rule, request, &facts, FailureAction::Deny);
            assert!(d.message.contains(says), "{}", d.message);
            assert!(
                d.message.len() <= MESSAGE_BYTES,
                "{} bytes",
                d.message.len()
            );
            assert_eq!(d.warnings.len(), 1);
            assert!(d.warnings[0].len() <= MESSAGE_BYTES + 32);
        }
    }

    #[test]
    fn lists_show_five_and_count_the_rest() {
        assert_eq!(list(["a", "b"].iter()), "a, b");
        let keys: Vec<String> = (0..50_000).map(|i| format!("k{i}")).collect();
        assert_eq!(list(keys.iter()), "k0, k1, k2, k3, k4 and 49995 more");
    }
}
