//! Running the git CLI for the network side of the mirror (init, fetch),
//! isolated from the machine's configuration, bounded by a timeout, with
//! credentials handed over through a credential helper that reads the secret
//! files at fetch time: only file paths ever reach a command line or the
//! environment, and nothing is written into the mirror's config.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{Credentials, FetchErrorKind, FetchFailure};

/// The credential helper, a shell function run by git (`!` prefix). It
/// answers `get` only, only for the configured host, with the contents of
/// the files named by environment variables. `printf` is a shell builtin, so
/// the secret never appears in any process's arguments.
const CREDENTIAL_HELPER: &str = r#"!f() { test "$1" = get || { cat >/dev/null; exit 0; }; h=; while IFS= read -r l; do case "$l" in host=*) h="${l#host=}";; esac; done; test "$h" = "$SG_CRED_HOST" || exit 0; if test -n "$SG_CRED_USER_FILE"; then printf 'username=%s\n' "$(cat "$SG_CRED_USER_FILE")"; else printf 'username=%s\n' "$SG_CRED_USER"; fi; printf 'password=%s\n' "$(cat "$SG_CRED_PASS_FILE")"; }; f"#;

/// The ssh command for `Credentials::Ssh`: no user or system ssh config,
/// strict host key checking against the given known_hosts, never a prompt.
const SSH_COMMAND: &str = r#"ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=15 -o UserKnownHostsFile="$SG_SSH_KNOWN_HOSTS" -i "$SG_SSH_KEY""#;

/// Environment variables passed through to git (proxies, CA bundles).
const PASS_ENV: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "TMPDIR",
];

/// The git CLI, configured for one source.
#[derive(Clone, Debug)]
pub(crate) struct GitCli {
    url: String,
    redacted_url: String,
    branch: String,
    credentials: Option<Credentials>,
    timeout: Duration,
    /// A directory for git's `HOME` (nothing is read from it).
    home: PathBuf,
}

impl GitCli {
    pub(crate) fn new(
        url: &str,
        branch: &str,
        credentials: Option<Credentials>,
        timeout: Duration,
        home: PathBuf,
    ) -> Self {
        GitCli {
            url: url.to_owned(),
            redacted_url: redact_url(url),
            branch: branch.to_owned(),
            credentials,
            timeout,
            home,
        }
    }

    pub(crate) fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// `git init --bare` at `path`, with HEAD on the branch.
    pub(crate) async fn init_bare(&self, path: &Path) -> Result<(), FetchFailure> {
        let head = format!("--initial-branch={}", self.branch);
        let args: Vec<OsString> = vec![
            "init".into(),
            "--bare".into(),
            "--quiet".into(),
            head.into(),
            path.as_os_str().to_owned(),
        ];
        self.run(None, &[], args, FetchErrorKind::Local, self.timeout)
            .await
            .map(|_| ())
    }

    /// Fetches the branch into `refs/heads/<branch>` of the bare repository
    /// at `git_dir` (a forced update: history rewrites are accepted).
    pub(crate) async fn fetch_branch(&self, git_dir: &Path) -> Result<(), FetchFailure> {
        let refspec = format!("+refs/heads/{0}:refs/heads/{0}", self.branch);
        self.fetch(git_dir, vec![refspec.into()]).await
    }

    /// Fetches one commit by id (servers that allow it; protocol v2 servers
    /// allow any commit reachable from a ref). Only objects are kept.
    pub(crate) async fn fetch_commit(
        &self,
        git_dir: &Path,
        id: &gix::ObjectId,
    ) -> Result<(), FetchFailure> {
        self.fetch(git_dir, vec![id.to_string().into()]).await
    }

    async fn fetch(&self, git_dir: &Path, refspecs: Vec<OsString>) -> Result<(), FetchFailure> {
        let mut args: Vec<OsString> = vec![
            "fetch".into(),
            "--quiet".into(),
            "--no-tags".into(),
            "--no-write-fetch-head".into(),
            "--no-recurse-submodules".into(),
            "--".into(),
            self.url.clone().into(),
        ];
        args.extend(refspecs);
        self.run(
            Some(git_dir),
            &[],
            args,
            FetchErrorKind::Other,
            self.timeout,
        )
        .await
        .map(|_| ())
    }

    /// Geometric repack of the bare repository at `git_dir`: loose objects
    /// and the small packs that break a factor-2 size progression are
    /// rolled into one new pack, then (`-d`) the packs and loose objects it
    /// made redundant are deleted. Cost is amortised O(new objects), never
    /// a rewrite of the whole repository each time. Unreachable objects are
    /// kept (nothing is pruned): revisions of a rewritten history stay
    /// "known". The new pack is complete (renamed into place) before anything
    /// is deleted, which is what keeps concurrent gix readers safe (see
    /// `docs/mirror.md`).
    pub(crate) async fn repack(
        &self,
        git_dir: &Path,
        timeout: Duration,
    ) -> Result<(), FetchFailure> {
        let args: Vec<OsString> = vec![
            "repack".into(),
            "-d".into(),
            "-l".into(),
            "-n".into(),
            "-q".into(),
            "--geometric=2".into(),
        ];
        // One thread: the webhook shares the machine; no bitmaps (they need
        // a full repack or a multi-pack index, and nothing here reads them).
        let config = ["pack.threads=1", "repack.writeBitmaps=false"];
        self.run(Some(git_dir), &config, args, FetchErrorKind::Local, timeout)
            .await
            .map(|_| ())
    }

    /// Runs git with `args` (after the isolating `-c` options), killing its
    /// whole process group after the timeout.
    async fn run(
        &self,
        git_dir: Option<&Path>,
        extra_config: &[&str],
        args: Vec<OsString>,
        default_kind: FetchErrorKind,
        timeout: Duration,
    ) -> Result<String, FetchFailure> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear();
        for key in PASS_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.env("HOME", &self.home)
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("GCM_INTERACTIVE", "never");
        if let Some(dir) = git_dir {
            cmd.arg("--git-dir").arg(dir);
        }
        for opt in [
            "gc.auto=0",
            "maintenance.auto=false",
            "protocol.version=2",
            "core.askPass=true",
            "credential.helper=",
            "credential.interactive=false",
            "http.lowSpeedLimit=1",
            "core.logAllRefUpdates=false",
        ]
        .iter()
        .chain(extra_config)
        {
            cmd.arg("-c").arg(opt);
        }
        match &self.credentials {
            Some(Credentials::Basic {
                username_file,
                password_file,
            }) => {
                cmd.arg("-c")
                    .arg(format!("credential.helper={CREDENTIAL_HELPER}"));
                cmd.env("SG_CRED_HOST", url_host(&self.url))
                    .env("SG_CRED_USER_FILE", username_file)
                    .env("SG_CRED_PASS_FILE", password_file);
            }
            Some(Credentials::Token {
                token_file,
                username,
            }) => {
                cmd.arg("-c")
                    .arg(format!("credential.helper={CREDENTIAL_HELPER}"));
                cmd.env("SG_CRED_HOST", url_host(&self.url))
                    .env(
                        "SG_CRED_USER",
                        username.as_deref().unwrap_or("x-access-token"),
                    )
                    .env("SG_CRED_PASS_FILE", token_file);
            }
            Some(Credentials::Ssh {
                private_key_file,
                known_hosts_file,
            }) => {
                cmd.env("GIT_SSH_COMMAND", SSH_COMMAND)
                    .env("SG_SSH_KEY", private_key_file)
                    .env("SG_SSH_KNOWN_HOSTS", known_hosts_file);
            }
            None => {}
        }
        // Low-speed abort after the timeout too: a stalled HTTP transfer.
        cmd.env(
            "GIT_HTTP_LOW_SPEED_TIME",
            self.timeout.as_secs().max(1).to_string(),
        );
        cmd.args(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let verb = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let what = self.describe(&verb, git_dir, args.last());
        let mut child = cmd.spawn().map_err(|e| FetchFailure {
            kind: FetchErrorKind::Local,
            message: format!("cannot run {what}: {e}"),
        })?;
        let pid = child.id();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let work = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (status, out, err)
        };
        let (status, out, err) = match tokio::time::timeout(timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                if let Some(pid) = pid {
                    kill_group(pid);
                }
                let why = if verb == "fetch" {
                    " (remote hanging or unreachable)"
                } else {
                    ""
                };
                return Err(FetchFailure {
                    kind: FetchErrorKind::Timeout,
                    message: format!("{what} did not finish within {timeout:?}{why}; killed"),
                });
            }
        };
        let status = status.map_err(|e| FetchFailure {
            kind: FetchErrorKind::Local,
            message: format!("{what}: {e}"),
        })?;
        if status.success() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        let stderr_text = self.scrub(&String::from_utf8_lossy(&err));
        let no_space = is_no_space(&stderr_text);
        let kind = if no_space {
            FetchErrorKind::Local
        } else {
            classify(&stderr_text).unwrap_or(default_kind)
        };
        let detail = stderr_text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let host_key = host_key_problem(&stderr_text);
        let message = match (kind, host_key) {
            // Only ssh's lines about the host key (the offending known_hosts
            // line, the server's fingerprint: public); not its banner.
            (FetchErrorKind::Auth, Some(problem)) => format!(
                "host key verification for {} failed: {} (check knownHostsFile): {}",
                self.redacted_url,
                problem,
                stderr_text
                    .lines()
                    .map(str::trim)
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        ["host key", "offending", "fingerprint", "sha256:"]
                            .iter()
                            .any(|p| l.contains(p))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            (FetchErrorKind::Auth, _) => format!(
                "authentication to {} failed (check the credentials files): {detail}",
                self.redacted_url
            ),
            (FetchErrorKind::BranchMissing, _) => format!(
                "branch {} not found on {} (deleted?): {detail}",
                self.branch, self.redacted_url
            ),
            // git's own message often names a temporary file, or nothing:
            // say which filesystem is full.
            _ if no_space => format!(
                "no space left on device in {}: {what} failed ({status}): {detail}",
                git_dir.map_or_else(|| self.home.display(), Path::display)
            ),
            _ => format!("{what} failed ({status}): {detail}"),
        };
        // git's stderr relays the remote's text: bounded like every echo.
        Err(FetchFailure {
            kind,
            message: crate::echo::message(message),
        })
    }

    /// Names a git run in messages: `git fetch from URL into DIR`,
    /// `git repack of DIR`, `git init of DIR`.
    fn describe(&self, verb: &str, git_dir: Option<&Path>, last_arg: Option<&OsString>) -> String {
        match (verb, git_dir) {
            ("fetch", Some(dir)) => format!(
                "git fetch from {} into {}",
                self.redacted_url,
                dir.display()
            ),
            (_, Some(dir)) => format!("git {verb} of {}", dir.display()),
            // `git init <path>`: the path is the last argument.
            (_, None) => match last_arg {
                Some(path) => format!("git {verb} of {}", Path::new(path).display()),
                None => format!("git {verb}"),
            },
        }
    }

    /// Removes anything secret-looking from git's output: userinfo in URLs.
    fn scrub(&self, text: &str) -> String {
        let text = text.replace(&self.url, &self.redacted_url);
        redact_all_urls(&text)
    }
}

/// Sends SIGKILL to the process group `pid` leads (git and its helpers).
fn kill_group(pid: u32) {
    // `kill` as a process: spawned only when a fetch times out.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What ssh's strict host key check refused, if that is what failed.
fn host_key_problem(stderr: &str) -> Option<&'static str> {
    let s = stderr.to_ascii_lowercase();
    if !s.contains("host key verification failed") {
        return None;
    }
    Some(if s.contains("remote host identification has changed") {
        "the server's host key differs from the one in the known_hosts file"
    } else if s.contains("host key is known for") {
        "the known_hosts file has no key for this host"
    } else {
        "the server's host key is not accepted by the known_hosts file"
    })
}

/// git's (LC_ALL=C) ways of saying the filesystem is full (ENOSPC, EDQUOT).
fn is_no_space(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "no space left on device",
        "out of diskspace",
        "disk quota exceeded",
    ]
    .iter()
    .any(|p| s.contains(p))
}

/// Maps git's (LC_ALL=C) error output to a failure kind.
fn classify(stderr: &str) -> Option<FetchErrorKind> {
    let s = stderr.to_ascii_lowercase();
    if s.contains("couldn't find remote ref") {
        return Some(FetchErrorKind::BranchMissing);
    }
    const AUTH: &[&str] = &[
        "authentication failed",
        "could not read username",
        "could not read password",
        "unable to get password",
        "terminal prompts disabled",
        "access denied",
        "returned error: 401",
        "returned error: 403",
        "permission denied (publickey",
        "host key verification failed",
        "invalid credentials",
    ];
    if AUTH.iter().any(|p| s.contains(p)) {
        return Some(FetchErrorKind::Auth);
    }
    const UNREACHABLE: &[&str] = &[
        "connection refused",
        "could not resolve host",
        "unable to connect",
        "unable to look up",
        "failed to connect",
        "connection timed out",
        "connection reset",
        "does not appear to be a git repository",
        "repository not found",
        "returned error: 404",
        "no route to host",
        "the remote end hung up",
    ];
    if UNREACHABLE.iter().any(|p| s.contains(p)) {
        return Some(FetchErrorKind::Unreachable);
    }
    None
}

/// The host (with port) of a URL, as git's credential protocol names it.
fn url_host(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return String::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.to_owned()
}

/// `scheme://user:secret@host/path` -> `scheme://***@host/path`; other URLs
/// unchanged.
pub fn redact_url(url: &str) -> String {
    redact_all_urls(url)
}

/// Redacts the userinfo of every `scheme://userinfo@host` in `text`.
pub(crate) fn redact_all_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (before, after) = rest.split_at(pos + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '\'' || c == '"'
            })
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo() {
        assert_eq!(
            redact_url("https://bob:s3cret@git.example.com/a.git"),
            "https://***@git.example.com/a.git"
        );
        assert_eq!(
            redact_url("https://git.example.com/a.git"),
            "https://git.example.com/a.git"
        );
        assert_eq!(
            redact_all_urls("fatal: 'http://t0k3n@h:80/x' and ssh://git@h/y"),
            "fatal: 'http://***@h:80/x' and ssh://***@h/y"
        );
        assert_eq!(redact_url("/srv/git/repo.git"), "/srv/git/repo.git");
    }

    #[test]
    fn host_of_url() {
        assert_eq!(
            url_host("https://u:p@git.example.com:8443/a.git"),
            "git.example.com:8443"
        );
        assert_eq!(url_host("http://127.0.0.1:9/r"), "127.0.0.1:9");
        assert_eq!(url_host("/local/path"), "");
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(
            classify("fatal: couldn't find remote ref refs/heads/main"),
            Some(FetchErrorKind::BranchMissing)
        );
        assert_eq!(
            classify("fatal: Authentication failed for 'http://h/r'"),
            Some(FetchErrorKind::Auth)
        );
        assert_eq!(
            classify(
                "fatal: unable to connect to 127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused"
            ),
            Some(FetchErrorKind::Unreachable)
        );
        assert_eq!(classify("fatal: bad object abc"), None);
    }

    #[test]
    fn recognises_a_full_disk_and_host_key_problems() {
        assert!(is_no_space(
            "fatal: write error: No space left on device\nfatal: fetch-pack: invalid index-pack output"
        ));
        assert!(is_no_space(
            "fatal: sha1 file 'x' write error. Out of diskspace"
        ));
        assert!(!is_no_space("fatal: bad object abc"));
        assert_eq!(
            host_key_problem(
                "No ED25519 host key is known for [h]:22 and you have requested strict checking.\nHost key verification failed."
            ),
            Some("the known_hosts file has no key for this host")
        );
        assert_eq!(
            host_key_problem(
                "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed."
            ),
            Some("the server's host key differs from the one in the known_hosts file")
        );
        assert_eq!(host_key_problem("Permission denied (publickey)."), None);
    }
}
