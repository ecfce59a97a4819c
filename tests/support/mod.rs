//! Shared helpers for the integration tests: real git fixture repositories,
//! a deadline-guarded runner for the `stale-guard` binary, a `kubectl
//! kustomize` runner on clean checkouts, and an independent re-implementation
//! of the overlay checksum (contract section 4) used to cross-check the engine.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Every run of the binary is killed (and the test failed) after this long.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The domain-separation prefix of checksum version 1.
pub const CHECKSUM_PREFIX: &[u8] = b"stale-guard/overlay/v1\0";

// ---------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------

/// A `git` command isolated from the user's and the system's configuration,
/// with a fixed identity.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir);
    isolate_git_env(&mut cmd);
    cmd.args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]);
    cmd.args(["-c", "core.autocrlf=false", "-c", "core.symlinks=true"]);
    cmd.args([
        "-c",
        "init.defaultBranch=main",
        "-c",
        "advice.detachedHead=false",
    ]);
    cmd.args(["-c", "protocol.file.allow=always", "-c", "gc.auto=0"]);
    cmd
}

fn isolate_git_env(cmd: &mut Command) {
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CEILING_DIRECTORIES",
        "GIT_NAMESPACE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Fixture Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Fixture Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("LC_ALL", "C");
}

/// Runs git in `dir`, panics on failure, returns stdout.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = git_command(dir)
        .args(args)
        .output()
        .expect("failed to spawn git (is git installed?)");
    assert!(
        out.status.success(),
        "git {args:?} failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real git repository in a temporary directory.
pub struct Repo {
    tmp: tempfile::TempDir,
    root: PathBuf,
    tick: Cell<u64>,
}

impl Default for Repo {
    fn default() -> Self {
        Self::new()
    }
}

impl Repo {
    /// `git init` a fresh repository (branch `main`).
    pub fn new() -> Repo {
        let tmp = tempfile::Builder::new()
            .prefix("sg-fixture-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().join("repo");
        fs::create_dir_all(&root).unwrap();
        git_in(&root, &["init", "-q", "-b", "main"]);
        Repo {
            tmp,
            root,
            tick: Cell::new(0),
        }
    }

    /// Clones `self` with `git clone --no-local` into a fresh temp dir.
    pub fn clone_no_local(&self) -> Repo {
        let tmp = tempfile::Builder::new()
            .prefix("sg-clone-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().join("clone");
        let src = self.root.to_str().unwrap();
        let dst = root.to_str().unwrap();
        git_in(tmp.path(), &["clone", "-q", "--no-local", src, dst]);
        Repo {
            tmp,
            root,
            tick: Cell::new(self.tick.get()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn path_str(&self) -> &str {
        self.root.to_str().expect("utf-8 temp path")
    }

    /// A scratch directory next to the repository (outside it).
    pub fn scratch(&self) -> PathBuf {
        let p = self.tmp.path().join("scratch");
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.root, args)
    }

    fn abs(&self, rel: &str) -> PathBuf {
        assert!(!rel.starts_with('/'), "fixture paths are repo-relative");
        self.root.join(rel)
    }

    fn clear(&self, p: &Path) {
        if let Ok(md) = fs::symlink_metadata(p) {
            if md.is_dir() {
                fs::remove_dir_all(p).unwrap();
            } else {
                fs::remove_file(p).unwrap();
            }
        }
    }

    /// Writes a regular file (replacing a symlink rather than writing through it).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        let p = self.abs(rel);
        if let Ok(md) = fs::symlink_metadata(&p)
            && !md.is_file()
        {
            self.clear(&p);
        }
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        self
    }

    /// Appends bytes to a regular file.
    pub fn append(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        let p = self.abs(rel);
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(contents.as_ref()).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.abs(rel)).unwrap()
    }

    /// Creates (or replaces) a symlink `rel -> target`.
    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        let p = self.abs(rel);
        self.clear(&p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &p).unwrap();
        self
    }

    pub fn read_link(&self, rel: &str) -> String {
        fs::read_link(self.abs(rel))
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    pub fn is_symlink(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.abs(rel))
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    }

    pub fn remove(&self, rel: &str) -> &Self {
        self.clear(&self.abs(rel));
        self
    }

    pub fn mkdir(&self, rel: &str) -> &Self {
        fs::create_dir_all(self.abs(rel)).unwrap();
        self
    }

    /// `git add -A` + commit with a deterministic, strictly increasing date.
    /// Returns the new commit's full sha.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.commit_staged(msg)
    }

    /// Like [`commit`](Self::commit), with a symlink `rel -> target` that
    /// exists only in git: targets no filesystem can hold (megabytes long,
    /// empty) are stored with `git hash-object` and `update-index`.
    pub fn commit_with_raw_symlink(&self, rel: &str, target: &[u8], msg: &str) -> String {
        self.git(&["add", "-A"]);
        let mut child = git_command(&self.root)
            .args(["hash-object", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(target).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git hash-object failed");
        let oid = String::from_utf8(out.stdout).unwrap().trim().to_string();
        self.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("120000,{oid},{rel}"),
        ]);
        self.commit_staged(msg)
    }

    /// Commits the index as it is.
    fn commit_staged(&self, msg: &str) -> String {
        let t = self.tick.get() + 1;
        self.tick.set(t);
        let date = format!("{} +0000", 1_700_000_000 + t * 3600);
        let out = git_command(&self.root)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .args(["commit", "-q", "--allow-empty", "--no-verify", "-m", msg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git commit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.head()
    }

    /// A repository that stores files above 1 MiB the way `git add`
    /// stores big files (streamed into a pack, never held whole by git),
    /// with `files` and a file of `size` zero bytes at `rel`, created
    /// sparse (no disk blocks), committed.
    pub fn with_big_file(rel: &str, size: u64, files: &[(&str, &str)]) -> Repo {
        let repo = Repo::new();
        repo.git(&["config", "core.bigFileThreshold", "1m"]);
        for (path, text) in files {
            repo.write(path, text);
        }
        repo.write(rel, "");
        std::fs::File::options()
            .write(true)
            .open(repo.path().join(rel))
            .unwrap()
            .set_len(size)
            .unwrap();
        repo.commit("big file");
        repo
    }

    pub fn head(&self) -> String {
        self.rev_parse("HEAD")
    }

    pub fn rev_parse(&self, rev: &str) -> String {
        self.git(&["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")])
            .trim()
            .to_string()
    }

    /// `git reset --hard REV` + remove untracked files.
    pub fn reset_hard(&self, rev: &str) {
        self.git(&["reset", "-q", "--hard", rev]);
        self.git(&["clean", "-q", "-fdx"]);
    }

    /// Every tracked path (files, symlinks, gitlinks) at HEAD.
    pub fn ls_files(&self) -> Vec<String> {
        let out = self.git(&["ls-files", "-z"]);
        out.split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `git ls-tree -r -z REV`: path -> (mode, object id).
    pub fn tree(&self, rev: &str) -> BTreeMap<Vec<u8>, (String, String)> {
        let out = git_command(&self.root)
            .args(["ls-tree", "-r", "-z", "--full-tree", rev])
            .output()
            .unwrap();
        assert!(out.status.success(), "ls-tree {rev} failed");
        let mut map = BTreeMap::new();
        for rec in out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let tab = rec.iter().position(|b| *b == b'\t').unwrap();
            let meta = String::from_utf8_lossy(&rec[..tab]).into_owned();
            let mut parts = meta.split(' ');
            let mode = parts.next().unwrap().to_string();
            let _kind = parts.next().unwrap();
            let oid = parts.next().unwrap().to_string();
            map.insert(rec[tab + 1..].to_vec(), (mode, oid));
        }
        map
    }

    /// Reads many objects at once through `git cat-file --batch`.
    pub fn cat_objects(&self, oids: &[String]) -> Vec<Vec<u8>> {
        let mut child = git_command(&self.root)
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input: String = oids.iter().map(|o| format!("{o}\n")).collect();
        let writer = thread::spawn(move || {
            stdin.write_all(input.as_bytes()).unwrap();
        });
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut result = Vec::with_capacity(oids.len());
        for oid in oids {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let fields: Vec<&str> = header.split_whitespace().collect();
            assert!(
                fields.len() == 3,
                "cat-file --batch: unexpected header {header:?} for {oid}"
            );
            let size: usize = fields[2].parse().unwrap();
            let mut buf = vec![0u8; size + 1];
            reader.read_exact(&mut buf).unwrap();
            buf.pop();
            result.push(buf);
        }
        writer.join().unwrap();
        assert!(child.wait().unwrap().success());
        result
    }

    /// Exports `rev` (via `git archive | tar -x`) into a fresh temp dir.
    pub fn checkout(&self, rev: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("sg-checkout-")
            .tempdir()
            .unwrap();
        let mut archive = git_command(&self.root)
            .args(["archive", "--format=tar", rev])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(dir.path())
            .stdin(archive.stdout.take().unwrap())
            .output()
            .expect("failed to run tar");
        assert!(archive.wait().unwrap().success(), "git archive failed");
        assert!(
            tar.status.success(),
            "tar -x failed: {}",
            String::from_utf8_lossy(&tar.stderr)
        );
        dir
    }

    /// `kubectl kustomize <overlay> --load-restrictor LoadRestrictionsNone` on
    /// a clean export of `rev`.
    pub fn kustomize(&self, rev: &str, overlay: &str) -> Result<String, String> {
        let dir = self.checkout(rev);
        kustomize_dir(dir.path(), overlay)
    }
}

/// One repository of `tests/vectors/build.sh` (`plain`, `symlinked`,
/// `generators`, `helm`, `helm-repo-slash`), built fresh.
pub fn vector_repo(name: &str) -> Repo {
    let tmp = tempfile::Builder::new()
        .prefix("sg-vectors-")
        .tempdir()
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/build.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(tmp.path())
        .output()
        .expect("failed to run bash");
    assert!(
        out.status.success(),
        "tests/vectors/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Repo::open(tmp, name)
}

// ---------------------------------------------------------------------------
// kubectl kustomize
// ---------------------------------------------------------------------------

/// Runs `kubectl kustomize` on `root/overlay`. Panics if kubectl is missing:
/// the conformance tests must never silently skip.
pub fn kustomize_dir(root: &Path, overlay: &str) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join(overlay))
        .args(["--load-restrictor", "LoadRestrictionsNone"])
        .env("KUBECONFIG", "/dev/null")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "`kubectl` is required for these tests (kubectl kustomize, kustomize v5.5.0) \
                 but could not be run: {e}"
            )
        });
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let root_s = root.to_string_lossy().into_owned();
        let err = String::from_utf8_lossy(&out.stderr).replace(&root_s, "<ROOT>");
        // Strip the klog prefix (timestamp, pid) so two failures compare equal.
        let err = err
            .lines()
            .map(|l| match l.find("\"command failed\"") {
                Some(i) => &l[i..],
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        Err(err)
    }
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------
// the stale-guard binary
// ---------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stale-guard")
}

/// The result of one run of the binary.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub args: Vec<String>,
    /// The process's peak resident set size in KiB (its `ru_maxrss`).
    pub peak_rss_kib: u64,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stale-guard {:?} exited {} (expected 0)\nstdout:\n{}\nstderr:\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        &self.stdout
    }

    pub fn first_line(&self) -> &str {
        self.ok().lines().next().unwrap_or("")
    }

    /// Asserts exit `code` and returns stderr.
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "stale-guard {:?} exited {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        &self.stderr
    }
}

/// Runs the binary with the default deadline.
pub fn run_sg(args: &[&str]) -> Run {
    run_sg_deadline(args, DEADLINE)
}

/// Runs the binary; kills it and fails the test when `deadline` passes;
/// fails the test on a panic or a death by signal.
// The child is reaped by wait4, which clippy does not see.
#[allow(clippy::zombie_processes)]
pub fn run_sg_deadline(args: &[&str], deadline: Duration) -> Run {
    let start = Instant::now();
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0");
    isolate_git_env(&mut cmd);
    let mut child = cmd.spawn().expect("failed to spawn stale-guard");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        out_pipe.read_to_end(&mut v).ok();
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        err_pipe.read_to_end(&mut v).ok();
        v
    });
    // wait4 rather than try_wait: it also says how much memory this very
    // child peaked at.
    let pid = child.id() as libc::pid_t;
    let (status, peak_rss_kib) = loop {
        let mut raw = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our unreaped child; the pointers are valid.
        let reaped = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            use std::os::unix::process::ExitStatusExt;
            let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0);
            break (std::process::ExitStatus::from_raw(raw), peak);
        }
        assert!(reaped == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("stale-guard {args:?} did not finish within {deadline:?}: killed");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    let args_v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let Some(code) = status.code() else {
        panic!("stale-guard {args:?} was killed by a signal ({status:?})\nstderr:\n{stderr}");
    };
    assert!(
        code != 101 && !stderr.contains("panicked"),
        "stale-guard {args:?} PANICKED (exit {code})\nstderr:\n{stderr}"
    );
    Run {
        code,
        stdout,
        stderr,
        elapsed,
        args: args_v,
        peak_rss_kib,
    }
}

/// `stale-guard checksum --repo R --overlay O [--rev REV] [extra…]`.
pub fn checksum_run(repo: &Repo, overlay: &str, rev: Option<&str>, extra: &[&str]) -> Run {
    let mut args = vec!["checksum", "--repo", repo.path_str(), "--overlay", overlay];
    if let Some(r) = rev {
        args.push("--rev");
        args.push(r);
    }
    args.extend_from_slice(extra);
    run_sg(&args)
}

/// The checksum line, asserting success and its format.
pub fn checksum(repo: &Repo, overlay: &str, rev: Option<&str>) -> String {
    let run = checksum_run(repo, overlay, rev, &[]);
    let line = run.first_line().to_string();
    assert_checksum_format(&line);
    line
}

/// `Ok(checksum)` or `Err((exit code, stderr))`.
pub fn checksum_outcome(
    repo: &Repo,
    overlay: &str,
    rev: Option<&str>,
) -> Result<String, (i32, String)> {
    let run = checksum_run(repo, overlay, rev, &[]);
    if run.code == 0 {
        let line = run.stdout.lines().next().unwrap_or("").to_string();
        assert_checksum_format(&line);
        Ok(line)
    } else {
        Err((run.code, run.stderr))
    }
}

/// The closure names from `--list` (lines after the first).
pub fn list(repo: &Repo, overlay: &str, rev: Option<&str>) -> (String, Vec<String>) {
    let run = checksum_run(repo, overlay, rev, &["--list"]);
    let out = run.ok();
    let mut lines = out.lines();
    let sum = lines.next().unwrap_or("").to_string();
    assert_checksum_format(&sum);
    (sum, lines.map(str::to_string).collect())
}

pub fn json(repo: &Repo, overlay: &str, rev: Option<&str>) -> serde_json::Value {
    let run = checksum_run(repo, overlay, rev, &["--json"]);
    let out = run.ok();
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("--json output is not one JSON object ({e}):\n{out}"))
}

pub fn assert_checksum_format(s: &str) {
    let hex = s
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("checksum {s:?} does not start with sha256:"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "checksum {s:?} is not sha256:<64 lower-case hex>"
    );
}

// ---------------------------------------------------------------------------
// independent recomputation of the checksum
// ---------------------------------------------------------------------------

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Checksum v1 over (name, SHA-256(content)) pairs (sorted and de-duplicated here).
pub fn checksum_of(entries: &[(Vec<u8>, [u8; 32])]) -> String {
    let mut sorted: Vec<&(Vec<u8>, [u8; 32])> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut h = Sha256::new();
    h.update(CHECKSUM_PREFIX);
    for (name, digest) in sorted {
        h.update(name);
        h.update([0u8]);
        h.update(digest);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// One entry of the `--json` output.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: String,
    pub target: String,
    pub sha256: String,
}

/// Validates the shape of a `--json` document and returns its entries.
pub fn json_entries(doc: &serde_json::Value) -> Vec<Entry> {
    let entries = doc["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("--json has no entries array: {doc}"));
    let mut out = Vec::new();
    for e in entries {
        let name = e["name"].as_str().expect("entry.name").to_string();
        let kind = e["kind"].as_str().expect("entry.kind").to_string();
        let target = e["target"].as_str().expect("entry.target").to_string();
        let sha = e["sha256"].as_str().expect("entry.sha256").to_string();
        assert!(
            ["file", "link", "remote", "plugin", "submodule"].contains(&kind.as_str()),
            "bad kind in {e}"
        );
        assert_eq!(
            name,
            format!("{kind}:{target}"),
            "name != kind:target in {e}"
        );
        assert!(
            sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "entry sha256 is not 64 lower hex: {e}"
        );
        out.push(Entry {
            name,
            kind,
            target,
            sha256: sha,
        });
    }
    out
}

/// Recomputes the checksum from the `--json` entries' `sha256` fields.
pub fn checksum_from_json(doc: &serde_json::Value) -> String {
    let entries: Vec<(Vec<u8>, [u8; 32])> = json_entries(doc)
        .into_iter()
        .map(|e| {
            let d: [u8; 32] = hex::decode(&e.sha256).unwrap().try_into().unwrap();
            (e.name.into_bytes(), d)
        })
        .collect();
    checksum_of(&entries)
}

/// Recomputes every entry's content digest from git objects (`ls-tree` and
/// `cat-file`), asserts it equals the entry's reported `sha256`, and returns
/// the checksum computed from those independent digests.
///
/// Verifies: `file:` is a regular blob (100644/100755) at that path;
/// `link:` is a symlink (120000) whose target text is hashed; `submodule:` is
/// a gitlink whose commit id hex is hashed; `remote:` hashes the reference
/// text; `plugin:<path>#n` of a non-kustomization file hashes the whole file.
pub fn recompute_from_git(repo: &Repo, rev: &str, doc: &serde_json::Value) -> String {
    let tree = repo.tree(rev);
    let entries = json_entries(doc);
    let mut digests: Vec<Option<[u8; 32]>> = vec![None; entries.len()];
    let mut want: Vec<(usize, String)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let lookup = |path: &str| -> (String, String) {
            tree.get(path.as_bytes()).cloned().unwrap_or_else(|| {
                panic!(
                    "entry {} names {path:?}, which is not in the tree of {rev}",
                    e.name
                )
            })
        };
        match e.kind.as_str() {
            "file" => {
                let (mode, oid) = lookup(&e.target);
                assert!(
                    mode == "100644" || mode == "100755",
                    "{} is mode {mode}, not a regular file",
                    e.name
                );
                want.push((i, oid));
            }
            "link" => {
                let (mode, oid) = lookup(&e.target);
                assert_eq!(mode, "120000", "{} is not a symlink in the tree", e.name);
                want.push((i, oid));
            }
            "submodule" => {
                let (mode, oid) = lookup(&e.target);
                assert_eq!(mode, "160000", "{} is not a gitlink", e.name);
                digests[i] = Some(sha256(oid.to_lowercase().as_bytes()));
            }
            "remote" => digests[i] = Some(sha256(e.target.as_bytes())),
            "plugin" => {
                let (path, _n) = e.target.rsplit_once('#').expect("plugin target has #n");
                let base = path.rsplit('/').next().unwrap();
                if ["kustomization.yaml", "kustomization.yml", "Kustomization"].contains(&base) {
                    // Inline config: its text is part of the kustomization file; trust the digest.
                    digests[i] = Some(hex::decode(&e.sha256).unwrap().try_into().unwrap());
                } else {
                    let (_mode, oid) = lookup(path);
                    want.push((i, oid));
                }
            }
            k => panic!("unknown kind {k}"),
        }
    }
    let oids: Vec<String> = want.iter().map(|(_, o)| o.clone()).collect();
    let contents = repo.cat_objects(&oids);
    for ((i, _), content) in want.iter().zip(contents) {
        digests[*i] = Some(sha256(&content));
    }
    let mut pairs = Vec::new();
    for (e, d) in entries.iter().zip(digests) {
        let d = d.unwrap();
        assert_eq!(
            hex::encode(d),
            e.sha256,
            "entry {}: reported sha256 differs from the git object's content",
            e.name
        );
        pairs.push((e.name.clone().into_bytes(), d));
    }
    checksum_of(&pairs)
}

/// Full cross-check of one overlay at one revision: `--json` is well formed,
/// agrees with the text output and `--list`, and its checksum equals both
/// independent recomputations. Returns the checksum.
pub fn cross_check(repo: &Repo, overlay: &str, rev: &str) -> String {
    let doc = json(repo, overlay, Some(rev));
    assert_eq!(doc["version"], 1, "json.version");
    let sum = doc["checksum"].as_str().expect("json.checksum").to_string();
    assert_checksum_format(&sum);
    assert_eq!(
        doc["revision"].as_str().expect("json.revision"),
        repo.rev_parse(rev),
        "json.revision"
    );
    let names: Vec<String> = json_entries(&doc).into_iter().map(|e| e.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        names, sorted,
        "json entries not sorted by name or duplicated"
    );
    assert_eq!(
        checksum_from_json(&doc),
        sum,
        "checksum != recomputation from json entries"
    );
    assert_eq!(
        recompute_from_git(repo, rev, &doc),
        sum,
        "checksum != recomputation from git objects"
    );
    let (text_sum, listed) = list(repo, overlay, Some(rev));
    assert_eq!(text_sum, sum, "--list checksum != --json checksum");
    let quoted: Vec<String> = names.iter().map(|n| quote_name(n)).collect();
    assert_eq!(listed, quoted, "--list names != --json names");
    sum
}

/// Git-style C quoting of a name holding `"`, `\` or a newline (contract 4.1).
pub fn quote_name(name: &str) -> String {
    if !name.contains(['"', '\\', '\n']) {
        return name.to_string();
    }
    let mut s = String::from("\"");
    for c in name.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

// ---------------------------------------------------------------------------
// fixtures
// ---------------------------------------------------------------------------

/// The realistic GitOps repository. Every overlay here renders with
/// `kubectl kustomize` except [`GITOPS_REMOTE_OVERLAY`] (it lists a remote
/// resource, which kustomize would fetch).
pub const GITOPS_OVERLAYS: &[&str] = &[
    "overlays/prod/east",
    "overlays/prod/west",
    "overlays/staging/east",
    "overlays/dev/local",
];
pub const GITOPS_REMOTE_OVERLAY: &str = "overlays/prod/edge";
pub const INCIDENT_OVERLAY: &str = "overlays/prod/east";
pub const EDGE_REMOTE: &str = "https://github.com/example/edge-proxy//deploy/base?ref=v1.4.2";

/// The exact closure of `overlays/prod/east` in [`gitops_repo`] at HEAD.
pub const INCIDENT_CLOSURE: &[&str] = &[
    "file:bases/api/api.env",
    "file:bases/api/deployment.yaml",
    "file:bases/api/hpa.yaml",
    "file:bases/api/kustomization.yaml",
    "file:bases/api/secrets.env",
    "file:bases/api/service.yaml",
    "file:bases/ingress/ingress.yaml",
    "file:bases/ingress/kustomization.yaml",
    "file:bases/ingress/replacements/tls-host.yaml",
    "file:bases/prod-east/kustomization.yaml",
    "file:bases/prod-east/namespace.yaml",
    "file:bases/prod-east/patches/ingress-host.yaml",
    "file:bases/prod-east/patches/web-resources.yaml",
    "file:bases/prod-east/replacements/api-region.yaml",
    "file:bases/web/deployment.yaml",
    "file:bases/web/kustomization.yaml",
    "file:bases/web/nginx.conf",
    "file:bases/web/service.yaml",
    "file:bases/web/static/index.html",
    "file:bases/worker/cronjob.yaml",
    "file:bases/worker/kustomization.yaml",
    "file:bases/worker/scripts/run.sh",
    "file:components/monitoring/kustomization.yaml",
    "file:components/monitoring/scrape-annotations.yaml",
    "file:components/monitoring/servicemonitor.yaml",
    "file:components/tls/kustomization.yaml",
    "file:overlays/prod/east/ingress-class.yaml",
    "file:overlays/prod/east/kustomization.yaml",
    "file:shared/certs/ca.crt",
    "file:shared/certs/tls.crt",
    "file:shared/certs/tls.key",
    "file:shared/config/east/east.env",
    "file:shared/config/east/feature-flags.txt",
    "file:shared/config/east/region.properties",
    "link:bases/prod-east/config",
    "link:overlays/prod/east/base",
];

pub struct GitOps {
    pub repo: Repo,
    /// Every commit, oldest first.
    pub commits: Vec<String>,
}

/// Builds the realistic GitOps fixture (12 commits). Layout:
///
/// ```text
/// README.md  docs/runbook.md
/// shared/config/{east,west}/…  shared/certs/{ca.crt,tls.crt,tls.key}  shared/README.md
/// bases/{web,api,worker,ingress}/…            leaf bases (generators, replacements)
/// bases/prod-east/  (intermediate)  config -> ../../shared/config/east
/// bases/prod-west/  (intermediate)  config -> ../../shared/config/west
/// components/{monitoring,tls}/                kind: Component
/// overlays/prod/east/  base -> ../../../bases/prod-east   (the incident overlay)
/// overlays/prod/west/  base -> ../../../bases/prod-west
/// overlays/prod/edge/  ../east + a remote resource
/// overlays/staging/{common,east}/  overlays/dev/local/
/// ```
pub fn gitops_repo() -> GitOps {
    let r = Repo::new();
    let mut commits = Vec::new();

    // 1. leaf bases and docs
    r.write("README.md", "# corp-gitops\n\nFleet configuration. Render with `kubectl kustomize overlays/<env>/<region>`.\n");
    r.write(
        "docs/runbook.md",
        "# Runbook\n\n1. Open a PR.\n2. Wait for the checks.\n",
    );
    r.write(
        "bases/web/kustomization.yaml",
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
labels:
- pairs:
    app.kubernetes.io/name: web
  includeSelectors: true
resources:
- deployment.yaml
- service.yaml
configMapGenerator:
- name: web-nginx
  files:
  - nginx.conf
  - index.html=static/index.html
"#,
    );
    r.write(
        "bases/web/deployment.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  template:
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - containerPort: 80
        env:
        - name: WEB_MODE
          value: standard
        volumeMounts:
        - name: nginx
          mountPath: /etc/nginx/conf.d
      volumes:
      - name: nginx
        configMap:
          name: web-nginx
"#,
    );
    r.write(
        "bases/web/service.yaml",
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - name: http
    port: 80
    targetPort: 80
"#,
    );
    r.write(
        "bases/web/nginx.conf",
        "server {\n    listen 80;\n    location / { root /usr/share/nginx/html; }\n}\n",
    );
    r.write(
        "bases/web/static/index.html",
        "<html><body>corp web</body></html>\n",
    );
    r.write("bases/web/README.md", "The web frontend base.\n");
    r.write(
        "bases/api/kustomization.yaml",
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- deployment.yaml
- service.yaml
- hpa.yaml
configMapGenerator:
- name: api-config
  envs:
  - api.env
  literals:
  - FEATURE_X=true
secretGenerator:
- name: api-credentials
  type: Opaque
  envs:
  - secrets.env
"#,
    );
    r.write(
        "bases/api/deployment.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  labels:
    app: api
spec:
  replicas: 3
  selector:
    matchLabels:
      app: api
  template:
    metadata:
      labels:
        app: api
    spec:
      containers:
      - name: api
        image: ghcr.io/corp/api:2.4.1
        envFrom:
        - configMapRef:
            name: api-config
        - secretRef:
            name: api-credentials
"#,
    );
    r.write(
        "bases/api/service.yaml",
        r#"apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  selector:
    app: api
  ports:
  - name: http
    port: 8080
"#,
    );
    r.write(
        "bases/api/hpa.yaml",
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: api
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: api
  minReplicas: 3
  maxReplicas: 12
"#,
    );
    r.write("bases/api/api.env", "API_TIMEOUT=30s\nAPI_WORKERS=8\n");
    r.write(
        "bases/api/secrets.env",
        "DB_USER=api\nDB_PASSWORD=changeme\n",
    );
    r.write(
        "bases/worker/kustomization.yaml",
        r#"resources:
- cronjob.yaml
configMapGenerator:
- name: worker-script
  files:
  - run.sh=scripts/run.sh
"#,
    );
    r.write(
        "bases/worker/cronjob.yaml",
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: worker
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: worker
            image: ghcr.io/corp/worker:1.0.0
            command: ["/bin/sh", "/scripts/run.sh"]
"#,
    );
    r.write(
        "bases/worker/scripts/run.sh",
        "#!/bin/sh\necho reconciling\n",
    );
    r.write(
        "bases/ingress/kustomization.yaml",
        r#"resources:
- ingress.yaml
replacements:
- path: replacements/tls-host.yaml
"#,
    );
    r.write(
        "bases/ingress/ingress.yaml",
        ingress_yaml("www.example.com", "placeholder.example.com", ""),
    );
    r.write(
        "bases/ingress/replacements/tls-host.yaml",
        r#"source:
  kind: Ingress
  name: web
  fieldPath: spec.rules.0.host
targets:
- select:
    kind: Ingress
    name: web
  fieldPaths:
  - spec.tls.0.hosts.0
"#,
    );
    commits.push(r.commit("bases: web, api, worker, ingress"));

    // 2. shared configuration (outside every overlay)
    r.write(
        "shared/README.md",
        "Shared configuration, referenced from the bases.\n",
    );
    r.write(
        "shared/config/east/region.properties",
        "region=us-east-1\nzone.count=3\n",
    );
    r.write(
        "shared/config/east/feature-flags.txt",
        "checkout-v2=on\nsearch-beta=off\n",
    );
    r.write(
        "shared/config/east/east.env",
        "REGION=us-east-1\nLOG_LEVEL=info\n",
    );
    r.write(
        "shared/config/west/region.properties",
        "region=us-west-2\nzone.count=2\n",
    );
    r.write(
        "shared/config/west/feature-flags.txt",
        "checkout-v2=off\nsearch-beta=off\n",
    );
    r.write(
        "shared/config/west/west.env",
        "REGION=us-west-2\nLOG_LEVEL=warn\n",
    );
    r.write(
        "shared/certs/ca.crt",
        "-----BEGIN CERTIFICATE-----\nQ0EgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    r.write(
        "shared/certs/tls.crt",
        "-----BEGIN CERTIFICATE-----\ndGxzIGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n",
    );
    r.write(
        "shared/certs/tls.key",
        "-----BEGIN PRIVATE KEY-----\ndGxzIGtleQ==\n-----END PRIVATE KEY-----\n",
    );
    commits.push(r.commit("shared config and certs"));

    // 3. components
    r.write(
        "components/monitoring/kustomization.yaml",
        r#"apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
resources:
- servicemonitor.yaml
patches:
- path: scrape-annotations.yaml
  target:
    kind: Deployment
"#,
    );
    r.write(
        "components/monitoring/servicemonitor.yaml",
        r#"apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: web
  endpoints:
  - port: http
    interval: 30s
"#,
    );
    r.write(
        "components/monitoring/scrape-annotations.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: any
spec:
  template:
    metadata:
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "9090"
"#,
    );
    r.write(
        "components/tls/kustomization.yaml",
        r#"apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
secretGenerator:
- name: web-tls
  type: kubernetes.io/tls
  files:
  - tls.crt=../../shared/certs/tls.crt
  - tls.key=../../shared/certs/tls.key
  - ca.crt=../../shared/certs/ca.crt
"#,
    );
    commits.push(r.commit("components: monitoring, tls"));

    // 4. the prod-east intermediate base and the incident overlay
    r.write(
        "bases/prod-east/kustomization.yaml",
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: prod-apps
resources:
- namespace.yaml
- ../web
- ../api
- ../ingress
components:
- ../../components/monitoring
patches:
- path: patches/ingress-host.yaml
- target:
    kind: Deployment
    name: api
  patch: |-
    - op: replace
      path: /spec/replicas
      value: 6
patchesStrategicMerge:
- patches/web-resources.yaml
configMapGenerator:
- name: region-config
  files:
  - region.properties=config/region.properties
  - config/feature-flags.txt
  envs:
  - config/east.env
replacements:
- path: replacements/api-region.yaml
"#,
    );
    r.write(
        "bases/prod-east/namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod-apps\n  labels:\n    tier: prod\n",
    );
    r.write(
        "bases/prod-east/patches/ingress-host.yaml",
        ingress_patch_yaml("east.example.com", "8m"),
    );
    r.write(
        "bases/prod-east/patches/web-resources.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
      - name: web
        resources:
          limits:
            memory: 256Mi
"#,
    );
    r.write(
        "bases/prod-east/replacements/api-region.yaml",
        r#"source:
  kind: ConfigMap
  name: region-config
  fieldPath: data.REGION
targets:
- select:
    kind: Deployment
    name: api
  fieldPaths:
  - spec.template.metadata.annotations.region
  options:
    create: true
"#,
    );
    r.write(
        "bases/prod-east/README.md",
        "prod-east: web, api and ingress for us-east-1.\n",
    );
    r.symlink("bases/prod-east/config", "../../shared/config/east");
    r.write(
        "overlays/prod/east/kustomization.yaml",
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: prod-apps
resources:
- base
- ../../../bases/worker
components:
- ../../../components/tls
commonAnnotations:
  corp.example.com/overlay: prod-east
images:
- name: nginx
  newTag: 1.25.3
replicas:
- name: web
  count: 4
patches:
- path: ingress-class.yaml
"#,
    );
    r.symlink("overlays/prod/east/base", "../../../bases/prod-east");
    r.write(
        "overlays/prod/east/ingress-class.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n  ingressClassName: nginx-internal\n",
    );
    commits.push(r.commit("prod-east: intermediate base and overlay"));

    // 5. prod-west
    r.write(
        "bases/prod-west/kustomization.yaml",
        r#"namespace: prod-apps
resources:
- ../web
- ../api
- ../ingress
configMapGenerator:
- name: region-config
  files:
  - config/region.properties
  envs:
  - config/west.env
patches:
- path: ingress-host.yaml
"#,
    );
    r.write(
        "bases/prod-west/ingress-host.yaml",
        ingress_patch_yaml("west.example.com", "4m"),
    );
    r.symlink("bases/prod-west/config", "../../shared/config/west");
    r.write(
        "overlays/prod/west/kustomization.yaml",
        r#"resources:
- base
patches:
- target:
    kind: Deployment
    name: web
  patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
    spec:
      replicas: 5
"#,
    );
    r.symlink("overlays/prod/west/base", "../../../bases/prod-west");
    r.write(
        "overlays/prod/README.md",
        "Production overlays. Each region links its base.\n",
    );
    commits.push(r.commit("prod-west"));

    // 6. staging: overlay -> intermediate -> bases
    r.write(
        "overlays/staging/common/kustomization.yaml",
        r#"namespace: staging-apps
resources:
- ../../../bases/web
- ../../../bases/worker
labels:
- pairs:
    env: staging
"#,
    );
    r.write(
        "overlays/staging/east/kustomization.yaml",
        r#"resources:
- ../common
nameSuffix: -east
configMapGenerator:
- name: staging-settings
  envs:
  - settings.env
  files:
  - motd=../../../shared/config/east/feature-flags.txt
patchesStrategicMerge:
- |-
  apiVersion: batch/v1
  kind: CronJob
  metadata:
    name: worker
  spec:
    schedule: "*/30 * * * *"
- web-replicas.yaml
"#,
    );
    r.write(
        "overlays/staging/east/settings.env",
        "ENVIRONMENT=staging\nTRACE_SAMPLING=0.5\n",
    );
    r.write(
        "overlays/staging/east/web-replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n",
    );
    commits.push(r.commit("staging overlays"));

    // 7. dev
    r.write(
        "overlays/dev/local/kustomization.yaml",
        r#"namespace: dev
namePrefix: dev-
resources:
- ../../../bases/web
- ../../../bases/api
components:
- ../../../components/monitoring
configMapGenerator:
- name: dev-overrides
  files:
  - settings=overrides.properties
  literals:
  - DEBUG=true
secretGenerator:
- name: dev-secret
  literals:
  - token=dev-only
replacements:
- source:
    kind: ConfigMap
    name: dev-overrides
    fieldPath: data.DEBUG
  targets:
  - select:
      kind: Deployment
      name: web
    fieldPaths:
    - spec.template.metadata.annotations.debug
    options:
      create: true
patchesJson6902:
- target:
    group: apps
    version: v1
    kind: Deployment
    name: api
  path: api-json-patch.yaml
"#,
    );
    r.write(
        "overlays/dev/local/overrides.properties",
        "cache.enabled=false\nlog.level=debug\n",
    );
    r.write(
        "overlays/dev/local/api-json-patch.yaml",
        "- op: replace\n  path: /spec/replicas\n  value: 1\n",
    );
    commits.push(r.commit("dev overlay"));

    // 8. edge: the prod-east overlay plus a remote resource
    r.write(
        "overlays/prod/edge/kustomization.yaml",
        format!("resources:\n- ../east\n- {EDGE_REMOTE}\n"),
    );
    commits.push(r.commit("edge overlay with a remote base"));

    // 9-12. history
    r.write(
        "bases/web/deployment.yaml",
        String::from_utf8(r.read("bases/web/deployment.yaml"))
            .unwrap()
            .replace("image: nginx:1.25\n", "image: nginx:1.25.1\n"),
    );
    commits.push(r.commit("web: bump nginx"));
    r.write(
        "shared/config/east/feature-flags.txt",
        "checkout-v2=on\nsearch-beta=on\n",
    );
    commits.push(r.commit("east: enable search-beta"));
    r.append("README.md", "\nOwners: platform team.\n");
    commits.push(r.commit("docs: owners"));
    r.write("bases/api/api.env", "API_TIMEOUT=45s\nAPI_WORKERS=8\n");
    commits.push(r.commit("api: raise timeout"));

    GitOps { repo: r, commits }
}

fn ingress_yaml(host: &str, tls_host: &str, extra_meta: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web{extra_meta}
spec:
  ingressClassName: nginx
  tls:
  - hosts:
    - {tls_host}
    secretName: web-tls
  rules:
  - host: {host}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
"#
    )
}

fn ingress_patch_yaml(host: &str, body: &str) -> String {
    ingress_yaml(
        host,
        "placeholder.example.com",
        &format!("\n  annotations:\n    nginx.ingress.kubernetes.io/proxy-body-size: {body}"),
    )
}

/// A minimal valid ConfigMap resource.
pub fn configmap_yaml(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {value}\n")
}

/// Deterministic pseudo-random bytes (xorshift), for large fixture files.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Independent checksum of a closure given by its entry names (as listed,
/// unquoted): contents come from git objects at `rev` (`file:` blob bytes,
/// `link:` target text, `submodule:` commit hex, `remote:` the reference).
pub fn checksum_from_names(repo: &Repo, rev: &str, names: &[&str]) -> String {
    let tree = repo.tree(rev);
    let mut oids = Vec::new();
    let mut pending = Vec::new();
    let mut pairs = Vec::new();
    for name in names {
        let (kind, target) = name.split_once(':').expect("kind:target");
        match kind {
            "file" | "link" => {
                let (mode, oid) = tree
                    .get(target.as_bytes())
                    .unwrap_or_else(|| panic!("{name}: not in the tree"));
                let want_link = kind == "link";
                assert_eq!(mode == "120000", want_link, "{name}: mode {mode}");
                oids.push(oid.clone());
                pending.push(name.to_string());
            }
            "submodule" => {
                let (_, oid) = tree.get(target.as_bytes()).expect("gitlink");
                pairs.push((name.as_bytes().to_vec(), sha256(oid.as_bytes())));
            }
            "remote" => pairs.push((name.as_bytes().to_vec(), sha256(target.as_bytes()))),
            k => panic!("checksum_from_names does not handle {k}"),
        }
    }
    for (name, content) in pending.iter().zip(repo.cat_objects(&oids)) {
        pairs.push((name.as_bytes().to_vec(), sha256(&content)));
    }
    checksum_of(&pairs)
}

impl Repo {
    /// Wraps an existing repository directory (e.g. built by a script) that
    /// lives inside `tmp`.
    pub fn open(tmp: tempfile::TempDir, rel: &str) -> Repo {
        let root = tmp.path().join(rel);
        assert!(
            root.join(".git").exists(),
            "{} is not a repository",
            root.display()
        );
        Repo {
            tmp,
            root,
            tick: Cell::new(1000),
        }
    }
}
