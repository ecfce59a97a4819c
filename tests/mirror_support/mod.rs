//! Helpers for the mirror tests: origin repositories built with git
//! plumbing, a `git daemon` and a smart-HTTP server on loopback ports, and a
//! tracing subscriber that captures every log line of the test binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Every wait in these helpers gives up after this long.
pub const WAIT: Duration = Duration::from_secs(30);

/// A git command with no system or user configuration.
pub fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com");
    cmd
}

/// Runs git, panicking (in the test) with its stderr on failure; returns stdout.
pub fn run_git(dir: &Path, args: &[&str]) -> String {
    let out = git(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn oid(hex: &str) -> gix::ObjectId {
    gix::ObjectId::from_hex(hex.trim().as_bytes()).expect("40 hex digits")
}

/// A bare origin repository whose commits are made with plumbing (no work
/// tree), with strictly increasing committer dates.
pub struct Origin {
    pub dir: PathBuf,
    clock: AtomicU64,
}

pub const EPOCH: u64 = 1_700_000_000;

impl Origin {
    /// `root/<name>` as a bare repository, branch `main`.
    pub fn new(root: &Path, name: &str) -> Origin {
        let dir = root.join(name);
        run_git(
            root,
            &["init", "--bare", "--quiet", "--initial-branch=main", name],
        );
        // Allow fetching any reachable commit by id (also over protocol v0).
        run_git(
            &dir,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        Origin {
            dir,
            clock: AtomicU64::new(EPOCH),
        }
    }

    /// A commit with `parents` and a one-file tree naming `msg`.
    pub fn commit_with(&self, parents: &[&str], msg: &str) -> String {
        let t = self.clock.fetch_add(60, Ordering::SeqCst) + 60;
        let blob = {
            let mut child = git(&self.dir)
                .args(["hash-object", "-w", "--stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("git hash-object");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(msg.as_bytes())
                .expect("write blob");
            let out = child.wait_with_output().expect("hash-object");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let tree = {
            let mut child = git(&self.dir)
                .args(["mktree"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("git mktree");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(format!("100644 blob {blob}\tfile\n").as_bytes())
                .expect("write tree");
            let out = child.wait_with_output().expect("mktree");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let mut args = vec!["commit-tree".to_owned(), tree, "-m".into(), msg.into()];
        for p in parents {
            args.push("-p".into());
            args.push((*p).to_owned());
        }
        let date = format!("@{t} +0000");
        let out = git(&self.dir)
            .args(&args)
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_AUTHOR_DATE", &date)
            .output()
            .expect("commit-tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Commits on top of `branch` (or as a root) and moves the branch.
    pub fn commit(&self, branch: &str, msg: &str) -> String {
        let parent = self.tip(branch);
        let parents: Vec<&str> = parent.iter().map(String::as_str).collect();
        let id = self.commit_with(&parents, msg);
        self.set(branch, &id);
        id
    }

    pub fn tip(&self, branch: &str) -> Option<String> {
        let out = git(&self.dir)
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .expect("rev-parse");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Points `branch` at `id` (any move: this is also a force-push).
    pub fn set(&self, branch: &str, id: &str) {
        run_git(
            &self.dir,
            &["update-ref", &format!("refs/heads/{branch}"), id],
        );
    }

    pub fn delete(&self, branch: &str) {
        run_git(
            &self.dir,
            &["update-ref", "-d", &format!("refs/heads/{branch}")],
        );
    }

    /// `n` commits on `branch` through `git fast-import` (fast for big
    /// histories); returns the new tip.
    pub fn linear_history(&self, branch: &str, n: usize) -> String {
        let mut script = String::new();
        let start = self.clock.fetch_add(60 * n as u64, Ordering::SeqCst);
        let parent = self.tip(branch);
        for i in 0..n {
            let t = start + 60 * (i as u64 + 1);
            script.push_str(&format!(
                "commit refs/heads/{branch}\nmark :{}\ncommitter Test <test@example.com> {t} +0000\ndata {}\nc{i}\n",
                i + 1,
                format!("c{i}\n").len()
            ));
            if i == 0
                && let Some(p) = &parent
            {
                script.push_str(&format!("from {p}\n"));
            }
            script.push_str(&format!(
                "M 644 inline file\ndata {}\nc{i}\n\n",
                format!("c{i}\n").len()
            ));
        }
        fast_import(&self.dir, &script);
        self.tip(branch).expect("branch after fast-import")
    }

    /// One commit on top of `branch` (through `git fast-import`) that adds
    /// or replaces `files` (path, contents) and keeps the rest of the tree;
    /// returns the new tip.
    pub fn commit_files(&self, branch: &str, files: &[(&str, &str)], msg: &str) -> String {
        let t = self.clock.fetch_add(60, Ordering::SeqCst) + 60;
        let mut script = format!(
            "commit refs/heads/{branch}\ncommitter Test <test@example.com> {t} +0000\ndata {}\n{msg}\n",
            msg.len() + 1
        );
        if let Some(p) = self.tip(branch) {
            script.push_str(&format!("from {p}\n"));
        }
        for (path, contents) in files {
            script.push_str(&format!(
                "M 644 inline {path}\ndata {}\n{contents}\n",
                contents.len()
            ));
        }
        script.push('\n');
        fast_import(&self.dir, &script);
        self.tip(branch).expect("branch after fast-import")
    }

    /// A merge-heavy history: `n` commits; every 3rd commit merges a side
    /// line of two commits into the main line.
    pub fn merge_history(&self, branch: &str, n: usize) -> String {
        let mut script = String::new();
        let start = self.clock.fetch_add(60 * n as u64 + 60, Ordering::SeqCst);
        let mut mark = 0usize;
        let mut main: Option<usize>;
        let mut t = start;
        let mut made = 0usize;
        let commit = |script: &mut String, parents: &[usize], t: u64, mark: &mut usize| {
            *mark += 1;
            script.push_str(&format!(
                "commit refs/heads/scratch\nmark :{m}\ncommitter Test <test@example.com> {t} +0000\ndata {len}\nc{m}\n",
                m = *mark,
                len = format!("c{}\n", *mark).len()
            ));
            if let Some((first, rest)) = parents.split_first() {
                script.push_str(&format!("from :{first}\n"));
                for p in rest {
                    script.push_str(&format!("merge :{p}\n"));
                }
            } else {
                script.push_str("deleteall\n");
            }
            script.push_str(&format!("M 644 inline f{m}\ndata 2\nx\n\n", m = *mark));
            *mark
        };
        t += 60;
        main = Some(commit(&mut script, &[], t, &mut mark));
        while made < n {
            t += 60;
            let base: Vec<usize> = main.into_iter().collect();
            let side1 = commit(&mut script, &base, t, &mut mark);
            t += 60;
            let side2 = commit(&mut script, &[side1], t, &mut mark);
            t += 60;
            let m1 = commit(&mut script, &base, t, &mut mark);
            t += 60;
            let merged = commit(&mut script, &[m1, side2], t, &mut mark);
            main = Some(merged);
            made += 4;
        }
        script.push_str(&format!(
            "reset refs/heads/{branch}\nfrom :{}\n\n",
            main.unwrap_or(1)
        ));
        fast_import(&self.dir, &script);
        run_git(&self.dir, &["update-ref", "-d", "refs/heads/scratch"]);
        self.tip(branch).expect("branch after fast-import")
    }
}

fn fast_import(dir: &Path, script: &str) {
    let mut child = git(dir)
        .args(["fast-import", "--quiet", "--force"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write fast-import");
    let out = child.wait_with_output().expect("fast-import");
    assert!(
        out.status.success(),
        "fast-import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < WAIT, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `git daemon` serving `base` on a loopback port; killed on drop.
pub struct GitDaemon {
    pub port: u16,
    base: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// How a `git daemon` start ended: listening, or its port was taken.
enum DaemonStart {
    Listening(GitDaemon),
    PortTaken,
}

impl GitDaemon {
    /// On a free port. The port is picked by binding port 0 and releasing
    /// it, so another process can take it before the daemon binds: then
    /// the daemon exits and another port is tried.
    pub fn start(base: &Path) -> GitDaemon {
        for _ in 0..10 {
            if let DaemonStart::Listening(d) = Self::try_start(base, free_port()) {
                return d;
            }
        }
        panic!("git daemon: ten ports in a row were taken");
    }

    /// On `port` (a restart on the port a test already uses).
    pub fn start_on(base: &Path, port: u16) -> GitDaemon {
        match Self::try_start(base, port) {
            DaemonStart::Listening(d) => d,
            DaemonStart::PortTaken => panic!("git daemon: port {port} is taken"),
        }
    }

    /// Starts the daemon and waits for its own word that it listens
    /// ("Ready to rumble", logged after the bind), not for the port to
    /// accept, which another process on the same port would also do.
    fn try_start(base: &Path, port: u16) -> DaemonStart {
        let log = base.join(format!(".git-daemon-{port}.log"));
        let child = git(base)
            .args([
                "daemon",
                "--verbose",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                "--informative-errors",
            ])
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("git daemon log"))
            .process_group(0)
            .spawn()
            .expect("git daemon");
        let mut daemon = GitDaemon {
            port,
            base: base.to_path_buf(),
            log,
            child: Some(child),
        };
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&daemon.log).unwrap_or_default();
            if text.contains("Ready to rumble") {
                return DaemonStart::Listening(daemon);
            }
            let exited = daemon
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                let text = std::fs::read_to_string(&daemon.log).unwrap_or_default();
                daemon.child = None;
                if text.contains("Address already in use") {
                    return DaemonStart::PortTaken;
                }
                panic!("git daemon exited: {text}");
            }
            assert!(start.elapsed() < WAIT, "git daemon never listened: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The daemon forks per connection: kill its process group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && start.elapsed() < WAIT {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        *self = GitDaemon::start_on(&self.base.clone(), self.port);
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Smart HTTP (`git http-backend` behind python's http.server) on a
/// loopback port, optional basic auth; killed on drop.
pub struct HttpServer {
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl HttpServer {
    pub fn start(root: &Path, log: &Path, auth: Option<(&str, &str)>) -> HttpServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mirror_support/git_http.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(root).arg(log);
        if let Some((u, p)) = auth {
            cmd.arg(u).arg(p);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("python3 git_http.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("http server port");
        let port: u16 = line.trim().parse().expect("port number");
        wait_for_port(port);
        HttpServer {
            port,
            log: log.to_path_buf(),
            child,
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.port)
    }

    /// Requests logged so far whose line contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server on loopback that accepts connections and never answers.
pub struct HangingServer {
    pub port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl HangingServer {
    pub fn start() -> HangingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded: at most 64 connections, then the thread ends.
            for c in listener.incoming().take(64).flatten() {
                held.push(c);
            }
        });
        HangingServer {
            port,
            _thread: thread,
        }
    }
}

// ---------------------------------------------------------------------------
// log capture
// ---------------------------------------------------------------------------

/// Everything logged through `tracing` by this test binary.
pub fn captured_logs() -> String {
    LOGS.get()
        .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default()
}

static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();

/// Installs the capturing subscriber (once per test binary).
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(String::new()));
        let _ = tracing::subscriber::set_global_default(Capture {
            buf: Arc::clone(&buf),
            next: AtomicU64::new(1),
        });
        buf
    });
}

struct Capture {
    buf: Arc<Mutex<String>>,
    next: AtomicU64,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut f = Fields(String::new());
        span.record(&mut f);
        self.push(format!("span {}{}", span.metadata().name(), f.0));
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut f = Fields(String::new());
        values.record(&mut f);
        self.push(format!("record{}", f.0));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut f = Fields(String::new());
        event.record(&mut f);
        self.push(format!(
            "{} {}{}",
            event.metadata().level(),
            event.metadata().target(),
            f.0
        ));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    fn push(&self, line: String) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.push_str(&line);
        b.push('\n');
    }
}

/// Packs and loose objects in the bare repository at `git_dir`, counted
/// from the directory (independently of the code under test).
pub fn object_counts(git_dir: &Path) -> (usize, usize) {
    let objects = git_dir.join("objects");
    let packs = std::fs::read_dir(objects.join("pack"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .count()
        })
        .unwrap_or(0);
    let mut loose = 0;
    for i in 0..256 {
        if let Ok(d) = std::fs::read_dir(objects.join(format!("{i:02x}"))) {
            loose += d.filter_map(|e| e.ok()).count();
        }
    }
    (packs, loose)
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
