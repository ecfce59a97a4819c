//! Flux's post-build variable substitution (`spec.postBuild`), as
//! kustomize-controller applies it to each object kustomize renders
//! (fluxcd/pkg `kustomize/kustomize_varsub.go` and its `envsubst` fork of
//! drone/envsubst):
//!
//! - variables come from `substituteFrom` (ConfigMaps and Secrets, in
//!   order, a later one overriding an earlier one) and then the inline
//!   `substitute`, which wins; newlines are removed from every value
//!   ([`merge_variables`]);
//! - every name must match `^[_[:alpha:]][_[:alpha:][:digit:]]*$`, or the
//!   whole build fails;
//! - with no variables at all nothing is substituted;
//! - an object labelled or annotated
//!   `kustomize.toolkit.fluxcd.io/substitute: disabled` is left as it is;
//! - the object's YAML text is expanded as a shell-like template: `${var}`,
//!   the default forms `${var=x}`, `${var:=x}`, `${var:-x}` (and `:?`,
//!   `:+`, which the fork treats as defaults too: the default is used when
//!   the value is empty), `${#var}`, casing `${var^}` `${var^^}` `${var,}`
//!   `${var,,}`, `${var:pos}` `${var:pos:len}`, replacement `${var/a/b}`
//!   `${var//a/b}` `${var/#a/b}` `${var/%a/b}`, and trimming `${var#glob}`
//!   `${var##glob}` `${var%glob}` `${var%%glob}`. `$var` without braces is
//!   text, and `$$` is a literal `$` (so `$${var}` renders `${var}`). An
//!   unset variable is empty, unless `strict` (kustomize-controller's
//!   `StrictPostBuildSubstitutions`), where a `${var}` with no default
//!   that names an unset variable fails the build.

use serde_json::Value;
use std::collections::BTreeMap;

/// The label or annotation that turns substitution off for one object.
pub const SUBSTITUTE_KEY: &str = "kustomize.toolkit.fluxcd.io/substitute";
pub const DISABLED: &str = "disabled";

/// Flux's variable sources merged by its precedence: `from` in order (a
/// later source overrides an earlier one), then `inline`. Newlines are
/// removed from values, as Flux does. A Secret's values are its decoded
/// `data`; a missing `optional` source is simply left out.
pub fn merge_variables<'a>(
    from: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
    inline: &'a BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for source in from.into_iter().chain([inline]) {
        for (k, v) in source {
            vars.insert(k.clone(), v.replace('\n', ""));
        }
    }
    vars
}

/// A variable name Flux accepts: `^[_[:alpha:]][_[:alpha:][:digit:]]*$`
/// (POSIX classes: ASCII only).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Checks every name, as Flux does before substituting anything.
pub fn check_names(vars: &BTreeMap<String, String>) -> Result<(), String> {
    match vars.keys().find(|k| !valid_name(k)) {
        Some(bad) => Err(format!(
            "'{}' var name is invalid, must match '^[_[:alpha:]][_[:alpha:][:digit:]]*$'",
            crate::echo::value(bad)
        )),
        None => Ok(()),
    }
}

/// True when the object opts out of substitution.
pub fn disabled(object: &Value) -> bool {
    let meta = object.get("metadata");
    ["labels", "annotations"].iter().any(|field| {
        meta.and_then(|m| m.get(field))
            .and_then(|m| m.get(SUBSTITUTE_KEY))
            .and_then(Value::as_str)
            == Some(DISABLED)
    })
}

/// Substitutes `vars` into kustomize's multi-document output, one object
/// at a time as kustomize-controller does, and returns the new output.
/// No variables: the output is returned unchanged.
pub fn substitute_output(
    output: &[u8],
    vars: &BTreeMap<String, String>,
    strict: bool,
    max_bytes: u64,
) -> Result<Vec<u8>, String> {
    if vars.is_empty() {
        return Ok(output.to_vec());
    }
    check_names(vars)?;
    let text = std::str::from_utf8(output).map_err(|e| format!("output is not UTF-8: {e}"))?;
    let mut out = String::with_capacity(text.len());
    for (i, doc) in documents(text).into_iter().enumerate() {
        let value: Value = match serde_yaml_ng::from_str(doc) {
            Ok(v) => v,
            Err(e) => return Err(format!("document {}: {e}", i + 1)),
        };
        let expanded = if disabled(&value) {
            doc.to_owned()
        } else {
            let left = max_bytes.saturating_sub(out.len() as u64);
            expand_capped(
                doc,
                &|name| vars.get(name).map(String::as_str),
                strict,
                left,
            )
            .map_err(|e| format!("document {}: variable substitution failed: {e}", i + 1))?
        };
        out.push_str("---\n");
        out.push_str(&expanded);
        if !expanded.ends_with('\n') {
            out.push('\n');
        }
        if out.len() as u64 > max_bytes {
            return Err(format!(
                "the substituted output is larger than {max_bytes} bytes"
            ));
        }
    }
    Ok(out.into_bytes())
}

/// Splits YAML at document separators (`---` lines at column 0; a block
/// scalar's lines are always indented, so they never are one).
fn documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") {
            docs.push(&text[start..pos]);
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// Expands `input` like fluxcd/pkg's envsubst with `lookup` as the
/// variables. Errors name what could not be parsed.
pub fn envsubst<'v>(
    input: &str,
    lookup: impl Fn(&str) -> Option<&'v str>,
    strict: bool,
) -> Result<String, String> {
    expand_capped(input, &lookup, strict, u64::MAX)
}

/// Nesting of `${...}` inside a default or pattern, at most: the parser
/// recurses, and the text comes from the repository.
const MAX_DEPTH: usize = 32;

/// Values longer than this are not glob-trimmed (the fork's trimming
/// tries every prefix: quadratic in the value).
const MAX_TRIM_CHARS: usize = 4096;

/// [`envsubst`] that fails once the text it produces passes `max_bytes`
/// (defaults and patterns included), so a few references to a large
/// value cannot blow up memory.
fn expand_capped<'v, F: Fn(&str) -> Option<&'v str>>(
    input: &str,
    lookup: &F,
    strict: bool,
    max_bytes: u64,
) -> Result<String, String> {
    let mut p = Parser {
        s: input.as_bytes(),
        pos: 0,
        lookup,
        strict,
        depth: 0,
        produced: 0,
        max_bytes,
    };
    let mut out = Vec::with_capacity(input.len());
    while p.pos < p.s.len() {
        if out.len() as u64 > max_bytes {
            return Err(format!("the result is larger than {max_bytes} bytes"));
        }
        if p.at(b"${") {
            p.pos += 2;
            let v = p.func()?;
            out.extend_from_slice(v.as_bytes());
        } else if p.at(b"$$") {
            // `$$` is a literal `$` (so `$${x}` is the text `${x}`).
            out.push(b'$');
            p.pos += 2;
        } else {
            out.push(p.s[p.pos]);
            p.pos += 1;
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

struct Parser<'a, 'v, F: Fn(&str) -> Option<&'v str>> {
    s: &'a [u8],
    pos: usize,
    lookup: &'a F,
    strict: bool,
    depth: usize,
    /// Bytes of expansions produced so far, against `max_bytes`.
    produced: u64,
    max_bytes: u64,
}

const BAD: &str = "bad substitution";

impl<'v, F: Fn(&str) -> Option<&'v str>> Parser<'_, 'v, F> {
    fn at(&self, prefix: &[u8]) -> bool {
        self.s
            .get(self.pos..)
            .is_some_and(|r| r.starts_with(prefix))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn close(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'}') {
            self.pos += 1;
            Ok(())
        } else {
            Err(BAD.to_owned())
        }
    }

    fn ident(&mut self) -> String {
        let rest = std::str::from_utf8(self.s.get(self.pos..).unwrap_or_default()).unwrap_or("");
        let len: usize = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .map(char::len_utf8)
            .sum();
        let name = rest[..len].to_owned();
        self.pos += len;
        name
    }

    fn value(&self, name: &str) -> Option<&'v str> {
        (self.lookup)(name)
    }

    /// After `${`: one expression up to and including its `}`.
    fn func(&mut self) -> Result<String, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!("substitutions nested more than {MAX_DEPTH} deep"));
        }
        self.depth += 1;
        let v = self.expression();
        self.depth -= 1;
        let v = v?;
        self.produced = self.produced.saturating_add(v.len() as u64);
        if self.produced > self.max_bytes {
            return Err(format!(
                "the result is larger than {} bytes",
                self.max_bytes
            ));
        }
        Ok(v)
    }

    fn expression(&mut self) -> Result<String, String> {
        if self.peek() == Some(b'#') {
            self.pos += 1;
            let name = self.ident();
            if name.is_empty() {
                return Err(BAD.to_owned());
            }
            self.close()?;
            return Ok(self.value(&name).unwrap_or("").len().to_string());
        }
        let name = self.ident();
        if name.is_empty() {
            return Err("unable to parse variable name".to_owned());
        }
        let v = self.value(&name);
        let val = v.unwrap_or("").to_owned();
        match self.peek() {
            Some(b':') if matches!(self.s.get(self.pos + 1), Some(b'=' | b'-' | b'?' | b'+')) => {
                self.pos += 2;
                self.default(val)
            }
            Some(b'=') => {
                self.pos += 1;
                self.default(val)
            }
            Some(b':') => {
                self.pos += 1;
                self.substring(val)
            }
            Some(b',' | b'^') => {
                let mut op = Vec::new();
                while op.len() < 2 && matches!(self.peek(), Some(b',' | b'^')) {
                    op.push(self.s[self.pos]);
                    self.pos += 1;
                }
                self.close()?;
                Ok(match op.as_slice() {
                    b"," => first(&val, |c| c.to_lowercase().collect()),
                    b",," => val.to_lowercase(),
                    b"^" => first(&val, |c| c.to_uppercase().collect()),
                    b"^^" => val.to_uppercase(),
                    _ => val,
                })
            }
            Some(b'/') => self.replace(val),
            Some(op @ (b'#' | b'%')) => {
                self.pos += 1;
                let longest = self.peek() == Some(op);
                if longest {
                    self.pos += 1;
                }
                let pattern = self.param(|c| c != b'}', false)?;
                self.close()?;
                trim(&val, &pattern, op == b'#', longest)
            }
            _ => {
                if self.peek() != Some(b'}') {
                    return Err("missing closing brace".to_owned());
                }
                self.pos += 1;
                if v.is_none() && self.strict {
                    return Err(format!(
                        "variable not set (strict mode): {}",
                        crate::echo::value(&format!("{name:?}"))
                    ));
                }
                Ok(val)
            }
        }
    }

    /// One parameter: a nested `${...}` or a run of text the predicate
    /// accepts (stopping before a nested `${`). `escapes`: `\/`, `\\` and
    /// `$$` stand for their second character.
    fn param(&mut self, accept: impl Fn(u8) -> bool, escapes: bool) -> Result<String, String> {
        if self.at(b"${") {
            self.pos += 2;
            return self.func();
        }
        let mut text = Vec::new();
        while let Some(c) = self.peek() {
            if self.at(b"${") && !text.is_empty() {
                break;
            }
            let next = self.s.get(self.pos + 1).copied();
            if escapes
                && ((c == b'\\' && matches!(next, Some(b'/' | b'\\')))
                    || (c == b'$' && next == Some(b'$')))
            {
                text.push(next.unwrap_or(c));
                self.pos += 2;
                continue;
            }
            if !accept(c) {
                break;
            }
            text.push(c);
            self.pos += 1;
        }
        if text.is_empty() {
            return Err("unable to parse substitution within function".to_owned());
        }
        String::from_utf8(text).map_err(|e| e.to_string())
    }

    fn default(&mut self, val: String) -> Result<String, String> {
        let mut args = String::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            args.push_str(&self.param(|c| c != b'}', false)?);
        }
        Ok(if val.is_empty() { args } else { val })
    }

    fn substring(&mut self, val: String) -> Result<String, String> {
        let pos = self.param(|c| c != b':' && c != b'}', false)?;
        let len = match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                None
            }
            Some(b':') => {
                while self.peek() == Some(b':') {
                    self.pos += 1;
                }
                let len = self.param(|c| c != b'}', false)?;
                self.close()?;
                Some(len)
            }
            _ => return Err(BAD.to_owned()),
        };
        Ok(substr(&val, &pos, len.as_deref()))
    }

    fn replace(&mut self, val: String) -> Result<String, String> {
        self.pos += 1;
        let mode = match self.peek() {
            Some(c @ (b'/' | b'#' | b'%')) => {
                self.pos += 1;
                c
            }
            _ => b'1',
        };
        let from = self.param(|c| c != b'/', true)?;
        if self.peek() != Some(b'/') {
            return Err(BAD.to_owned());
        }
        self.pos += 1;
        let to = if self.peek() == Some(b'}') {
            None
        } else {
            Some(self.param(|c| c != b'}', true)?)
        };
        self.close()?;
        Ok(match (mode, to) {
            (b'/', to) => val.replace(&from, to.as_deref().unwrap_or("")),
            (b'1', to) => val.replacen(&from, to.as_deref().unwrap_or(""), 1),
            (b'#', Some(to)) if val.starts_with(&from) => val.replacen(&from, &to, 1),
            (b'%', Some(to)) if val.ends_with(&from) => {
                format!("{}{to}", &val[..val.len() - from.len()])
            }
            _ => val,
        })
    }
}

fn first(s: &str, f: impl Fn(char) -> String) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => f(c) + chars.as_str(),
        None => String::new(),
    }
}

/// `${var:pos}` / `${var:pos:len}` on bytes, like Go's slicing; an
/// unparsable number leaves the value as it is (bash's rule).
fn substr(s: &str, pos: &str, len: Option<&str>) -> String {
    let Ok(pos) = pos.parse::<i64>() else {
        return s.to_owned();
    };
    let n = s.len() as i64;
    let pos = if pos < 0 { (n + pos).max(0) } else { pos };
    let bytes = s.as_bytes();
    let slice =
        |a: i64, b: i64| String::from_utf8_lossy(&bytes[a as usize..b as usize]).into_owned();
    match len {
        None => {
            if pos < n {
                slice(pos, n)
            } else {
                String::new()
            }
        }
        Some(len) => {
            let Ok(len) = len.parse::<i64>() else {
                return s.to_owned();
            };
            if pos.saturating_add(len) >= n {
                if pos < n {
                    slice(pos, n)
                } else {
                    String::new()
                }
            } else if len < 0 {
                s.to_owned()
            } else {
                slice(pos, pos + len)
            }
        }
    }
}

/// `#`/`##` (prefix) and `%`/`%%` (suffix) removal by a glob, the way the
/// fork does it: prefixes are tried from the longest down to one
/// character (never the empty one), and suffixes on the reversed string
/// with the reversed pattern. A malformed pattern leaves the value.
fn trim(s: &str, pattern: &str, prefix: bool, longest: bool) -> Result<String, String> {
    if s.chars().count() > MAX_TRIM_CHARS {
        return Err(format!(
            "a value of more than {MAX_TRIM_CHARS} characters is not trimmed by a pattern"
        ));
    }
    if !prefix {
        let r: String = s.chars().rev().collect();
        let p: String = pattern.chars().rev().collect();
        return Ok(trim(&r, &p, true, longest)?.chars().rev().collect());
    }
    let Some(tokens) = glob_tokens(pattern) else {
        return Ok(s.to_owned());
    };
    let chars: Vec<char> = s.chars().collect();
    let mut shortest = None;
    for len in (1..=chars.len()).rev() {
        if glob_match(&tokens, &chars[..len]) {
            if longest {
                return Ok(chars[len..].iter().collect());
            }
            shortest = Some(len);
        }
    }
    Ok(match shortest {
        Some(len) => chars[len..].iter().collect(),
        None => s.to_owned(),
    })
}

/// One element of a glob: the fork's `path.Match` (Go's, with `/` an
/// ordinary character, as its `${f##*/}` case shows).
#[derive(Debug, Clone, PartialEq)]
enum Glob {
    /// `*`: any run of characters.
    Star,
    /// `?`: one character.
    Any,
    /// `[...]`: ranges, negated with `^`.
    Class(bool, Vec<(char, char)>),
    Char(char),
}

/// The pattern's elements; None when it is malformed (a trailing `\`, an
/// unclosed class).
fn glob_tokens(pattern: &str) -> Option<Vec<Glob>> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let escaped = |i: &mut usize| -> Option<char> {
        if p.get(*i) == Some(&'\\') {
            *i += 1;
        }
        let c = *p.get(*i)?;
        *i += 1;
        Some(c)
    };
    while i < p.len() {
        match p[i] {
            '*' => {
                i += 1;
                out.push(Glob::Star);
            }
            '?' => {
                i += 1;
                out.push(Glob::Any);
            }
            '[' => {
                i += 1;
                let negate = p.get(i) == Some(&'^');
                if negate {
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    if p.get(i) == Some(&']') && !ranges.is_empty() {
                        i += 1;
                        break;
                    }
                    let lo = escaped(&mut i)?;
                    let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
                        i += 1;
                        escaped(&mut i)?
                    } else {
                        lo
                    };
                    ranges.push((lo, hi));
                }
                out.push(Glob::Class(negate, ranges));
            }
            _ => out.push(Glob::Char(escaped(&mut i)?)),
        }
    }
    Some(out)
}

/// Whether `tokens` match all of `name`: iterative, backtracking only to
/// the last `*` (linear in practice, never exponential).
fn glob_match(tokens: &[Glob], name: &[char]) -> bool {
    let one = |t: &Glob, c: char| match t {
        Glob::Any => true,
        Glob::Char(x) => *x == c,
        Glob::Class(negate, ranges) => {
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate
        }
        Glob::Star => false,
    };
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Glob::Star) => {
                star = Some((t, n));
                t += 1;
            }
            Some(tok) if one(tok, name[n]) => {
                t += 1;
                n += 1;
            }
            _ => match star {
                Some((st, sn)) => {
                    t = st + 1;
                    n = sn + 1;
                    star = Some((st, sn + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|tok| *tok == Glob::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expand(input: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
        let v = vars(pairs);
        envsubst(input, |n| v.get(n).map(String::as_str), false)
    }

    /// The table of fluxcd/pkg envsubst's own cases (eval_test.go) and
    /// Flux's documented rules.
    #[test]
    fn expands_like_fluxs_envsubst() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[], "abcdEFGH28ij", "abcdEFGH28ij"),
            (&[("var01", "abcdEFGH28ij")], "${#var01}", "12"),
            (&[("var01", "abcdEFGH28ij")], "${var01^}", "AbcdEFGH28ij"),
            (&[("var01", "abcdEFGH28ij")], "${var01^^}", "ABCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,}", "aBCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,,}", "abcdefgh28ij"),
            (
                &[("p", "/home/bozo/ideas/thoughts.for.today")],
                "${p:11}",
                "ideas/thoughts.for.today",
            ),
            (
                &[("p", "/home/bozo/ideas/thoughts.for.today")],
                "${p:11:5}",
                "ideas",
            ),
            (&[("var", "abc")], "${var=xyz}", "abc"),
            (&[], "${var=xyz}", "xyz"),
            (&[("d", "foo")], "something ${var=${d}}", "something foo"),
            (
                &[("d", "foo1")],
                "foo: ${var=${d}-suffix}",
                "foo: foo1-suffix",
            ),
            (
                &[("d", "foo1")],
                "foo: ${var=prefix${d}-suffix}",
                "foo: prefixfoo1-suffix",
            ),
            (&[], "${var:=xyz}", "xyz"),
            (&[], "${var:-xyz}", "xyz"),
            (&[("var", "")], "${var:-xyz}", "xyz"),
            (&[("var", "set")], "${var:-xyz}", "set"),
            (
                &[("z", "abcABC123ABCabc")],
                "${z/%abc/XYZ}",
                "abcABC123ABCXYZ",
            ),
            (
                &[("z", "abcABC123ABCabc")],
                "${z/#abc/XYZ}",
                "XYZABC123ABCabc",
            ),
            (
                &[("z", "abcABC123ABCabc")],
                "${z//abc/xyz}",
                "xyzABC123ABCxyz",
            ),
            (
                &[("z", "abcABC123ABCabc")],
                "${z/abc/xyz}",
                "xyzABC123ABCabc",
            ),
            (&[("f", "bash.string.txt")], "${f#*.}", "string.txt"),
            (&[("f", "path/to/file")], "${f#*/}", "to/file"),
            (&[("f", "/path/to/file")], "${f#*/}", "path/to/file"),
            (&[("f", "bash.string.txt")], "${f##*.}", "txt"),
            (&[("f", "path/to/file")], "${f##*/}", "file"),
            (&[("f", "bash.string.txt")], "${f%.*}", "bash.string"),
            (&[("f", "bash.string.txt")], "${f%%.*}", "bash"),
            (
                &[("var01", "abcdEFGH28ij")],
                "${var=${var01^^}}",
                "ABCDEFGH28IJ",
            ),
            // Escapes: `$$` is a literal `$`; `$var` is text.
            (&[("var01", "abcdEFGH28ij")], "$${var01}", "${var01}"),
            (
                &[("var01", "abcdEFGH28ij")],
                "some text ${var01}$${var$${var01}$var01${var01}",
                "some text abcdEFGH28ij${var${var01}$var01abcdEFGH28ij",
            ),
            (
                &[("d", "foo")],
                "something $${var=${d}}",
                "something ${var=foo}",
            ),
            (&[("z", "foo/bar")], r"${z/\//-}", "foo-bar"),
            (&[("z", "foo/bar/baz")], r"${z//\//-}", "foo-bar-baz"),
            (
                &[("d", "foo")],
                r"\\something ${var=${d}}",
                r"\\something foo",
            ),
            (&[("z", "foo.bar")], "${z/./}", "foobar"),
            // Unset without a default: empty (not strict).
            (&[], "a${missing}b", "ab"),
            (&[("x", "1")], "$x ${x}", "$x 1"),
            (&[("x", "1")], "$$${x} a$$b", "$1 a$b"),
        ];
        for (pairs, input, want) in cases {
            assert_eq!(expand(input, pairs).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for bad in ["${", "${x", "${}", "${x-y}", "${x=y", "${x/a}", "${#}"] {
            assert!(expand(bad, &[("x", "1")]).is_err(), "{bad}");
        }
    }

    #[test]
    fn strict_mode_refuses_unset_variables_without_a_default() {
        let v = vars(&[("set", "1")]);
        let look = |n: &str| v.get(n).map(String::as_str);
        assert!(
            envsubst("${missing}", look, true)
                .unwrap_err()
                .contains("variable not set")
        );
        assert_eq!(envsubst("${missing:=d}", look, true).unwrap(), "d");
        assert_eq!(envsubst("${set}", look, true).unwrap(), "1");
    }

    #[test]
    fn names_are_validated_like_flux() {
        for good in ["a", "_", "A_1", "cluster_name"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "1a", "a-b", "a.b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let err =
            substitute_output(b"a: 1\n", &vars(&[("bad-name", "x")]), false, u64::MAX).unwrap_err();
        assert!(err.contains("var name is invalid"), "{err}");
    }

    #[test]
    fn inline_values_win_and_newlines_are_removed() {
        let cm = vars(&[("a", "cm"), ("b", "cm\n")]);
        let secret = vars(&[("b", "secret"), ("c", "se\ncret")]);
        let inline = vars(&[("c", "inline")]);
        assert_eq!(
            merge_variables([&cm, &secret], &inline),
            vars(&[("a", "cm"), ("b", "secret"), ("c", "inline")])
        );
        assert_eq!(
            merge_variables([&cm], &BTreeMap::new()),
            vars(&[("a", "cm"), ("b", "cm")])
        );
    }

    #[test]
    fn substitutes_each_object_but_the_disabled_ones() {
        let output = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a-${env}\ndata:\n  replicas: ${n}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  annotations:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\ndata:\n  x: ${env}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\ndata:\n  x: ${env}\n";
        let out = substitute_output(
            output,
            &vars(&[("env", "prod"), ("n", "3")]),
            false,
            u64::MAX,
        )
        .unwrap();
        let objects = crate::render::parse_objects(&out).unwrap();
        let by_name = |n: &str| {
            objects
                .values()
                .find(|v| v["metadata"]["name"] == n)
                .cloned()
                .unwrap()
        };
        // The substituted text is YAML again: `3` is a number.
        assert_eq!(by_name("a-prod")["data"]["replicas"], 3);
        assert_eq!(by_name("b")["data"]["x"], "${env}");
        assert_eq!(by_name("c")["data"]["x"], "${env}");
        // No variables: nothing is substituted, not even to empty.
        assert_eq!(
            substitute_output(output, &BTreeMap::new(), false, u64::MAX).unwrap(),
            output
        );
    }

    #[test]
    fn hostile_templates_fail_within_bounds() {
        // Nesting deeper than the parser's cap: an error, not a stack
        // overflow.
        let deep = format!("{}x{}", "${a=".repeat(10_000), "}".repeat(10_000));
        let err = expand(&deep, &[]).unwrap_err();
        assert!(err.contains("nested more than"), "{err}");
        // A large value referenced many times: cut at the cap.
        let big = "v".repeat(1 << 20);
        let many = "${big}".repeat(100);
        let v = vars(&[("big", &big)]);
        let err =
            expand_capped(&many, &|n| v.get(n).map(String::as_str), false, 8 << 20).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let err =
            substitute_output(format!("a: {many}\n").as_bytes(), &v, false, 8 << 20).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        // A pattern that is exponential for a naive matcher is quick.
        let value = "a".repeat(4000);
        let start = std::time::Instant::now();
        let pattern = format!("{}b", "*a".repeat(30));
        let out = expand(&format!("${{v##{pattern}}}"), &[("v", &value)]).unwrap();
        assert_eq!(out, value);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // Too long to trim at all.
        let long = "a".repeat(MAX_TRIM_CHARS + 1);
        assert!(expand("${v#a}", &[("v", &long)]).is_err());
        // Out-of-range substring numbers.
        assert_eq!(
            expand("${v:1:9223372036854775807}", &[("v", "abc")]).unwrap(),
            "bc"
        );
    }

    #[test]
    fn globs_follow_path_match() {
        let cases = [
            ("[a-c]*", "banana", true),
            ("[^a-c]*", "banana", false),
            ("?an*", "banana", true),
            ("\\*x", "*x", true),
            ("\\*x", "ax", false),
            ("a*/b", "a/x/b", true),
            ("a[", "a[", false),
        ];
        for (pattern, name, want) in cases {
            let got = glob_tokens(pattern)
                .is_some_and(|t| glob_match(&t, &name.chars().collect::<Vec<_>>()));
            assert_eq!(got, want, "{pattern} {name}");
        }
        // A malformed pattern leaves the value.
        assert_eq!(expand("${v#[}", &[("v", "abc")]).unwrap(), "abc");
    }
}
