//! SSH credentials for the mirror against a real, unprivileged `sshd` on a
//! loopback port: a key and a known_hosts file that match, a known_hosts
//! that does not (host key refused), a key the server does not know (auth
//! refused), and no key material in any log line, error, status or file of
//! the mirror. sshd is required: the test fails, not skips, without it.
#![cfg(unix)]

mod mirror_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirror_support::{Origin, WAIT, captured_logs, free_port, oid};
use stale_guard::mirror::{Credentials, FetchErrorKind, Mirror, SourceSpec};

/// Where Debian's openssh-server puts it; sshd must be started by its
/// absolute path (it re-executes itself).
const SSHD: &str = "/usr/sbin/sshd";

fn ssh_keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen (install openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The base64 body of a private key file: what must never leak.
fn key_material(private_key: &Path) -> Vec<String> {
    std::fs::read_to_string(private_key)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 20)
        .map(str::to_owned)
        .collect()
}

/// `sshd -D -e` on 127.0.0.1 with its own host key and authorized_keys, as
/// the current user; killed on drop.
struct Sshd {
    port: u16,
    host_public_key: String,
    child: Child,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, authorized_public_key: &Path) -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} not found: install openssh-server (apt-get install -y openssh-server); \
             the SSH credentials test needs a real sshd"
        );
        std::fs::create_dir_all(dir).unwrap();
        let host_key = dir.join("ssh_host_ed25519_key");
        ssh_keygen(&host_key, "host");
        let authorized = dir.join("authorized_keys");
        std::fs::copy(authorized_public_key, &authorized).unwrap();
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Privilege separation directory, required by sshd started as root
        // (a system path, normally made by the service's start-up).
        if is_root() {
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        // The port is picked by binding port 0 and releasing it, so another
        // process can take it first: sshd then exits, and another is tried.
        for _ in 0..10 {
            if let Some(sshd) = Self::try_start(dir, &host_key, &authorized, free_port()) {
                return sshd;
            }
        }
        panic!("sshd: ten ports in a row were taken");
    }

    /// Starts sshd on `port` and waits for its own "Server listening" line
    /// (logged after the bind), not for the port to accept, which another
    /// process on the same port would also do. `None`: the port was taken.
    fn try_start(dir: &Path, host_key: &Path, authorized: &Path, port: u16) -> Option<Sshd> {
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 AllowTcpForwarding no\n\
                 X11Forwarding no\n\
                 PrintMotd no\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                authorized = authorized.display(),
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {SSHD}: {e}"));
        let mut sshd = Sshd {
            port,
            host_public_key: std::fs::read_to_string(host_key.with_extension("pub")).unwrap(),
            child,
            log,
        };
        let listening = format!("Server listening on 127.0.0.1 port {port}");
        let start = Instant::now();
        while !sshd.log().contains(&listening) {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                if sshd.log().contains("Address already in use") {
                    return None;
                }
                panic!("sshd exited ({status}): {}", sshd.log());
            }
            assert!(
                start.elapsed() < WAIT,
                "sshd never listened: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(sshd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A known_hosts line for this server (`[127.0.0.1]:port key`).
    fn known_hosts_line(&self, public_key: &str) -> String {
        let mut parts = public_key.split_whitespace();
        let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}\n", self.port)
    }

    fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            current_user(),
            self.port,
            repo.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn spec(url: &str, credentials: Credentials) -> SourceSpec {
    let mut s = SourceSpec::new("src", url, "main");
    s.poll_interval = Duration::from_secs(3600);
    s.fetch_timeout = Duration::from_secs(20);
    s.credentials = Some(credentials);
    s
}

fn assert_no_material(text: &str, what: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "key material in {what}: {text}");
    }
}

fn assert_no_material_in_files(dir: &Path, secrets: &[String]) {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                seen += 1;
                assert_no_material(
                    &String::from_utf8_lossy(&bytes),
                    &p.display().to_string(),
                    secrets,
                );
            }
        }
    }
    assert!(seen > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_key_and_known_hosts_over_a_real_sshd() {
    mirror_support::capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let c0 = origin.commit("main", "c0");
    let keys = tmp.path().join("secret");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("id_ed25519");
    ssh_keygen(&key, "mirror");
    let stranger = keys.join("id_stranger");
    ssh_keygen(&stranger, "stranger");
    let sshd = Sshd::start(&tmp.path().join("sshd"), &key.with_extension("pub"));
    let known_hosts = keys.join("known_hosts");
    std::fs::write(&known_hosts, sshd.known_hosts_line(&sshd.host_public_key)).unwrap();
    let url = sshd.url(&origin.dir);
    let mut secrets = key_material(&key);
    secrets.extend(key_material(&stranger));
    assert!(secrets.len() >= 4, "key bodies read");

    // The right key and known_hosts: synced, and a new commit comes in.
    let mirrors = tmp.path().join("mirrors");
    let m = Mirror::open(
        spec(
            &url,
            Credentials::Ssh {
                private_key_file: key.clone(),
                known_hosts_file: known_hosts.clone(),
            },
        ),
        &mirrors,
    )
    .await
    .unwrap();
    assert_eq!(
        m.head().map(|h| h.commit),
        Some(oid(&c0)),
        "{:?}; sshd: {}",
        m.status().last_failure,
        sshd.log()
    );
    let c1 = origin.commit("main", "c1");
    m.refresh().await.unwrap();
    assert_eq!(m.head().unwrap().commit, oid(&c1));

    // A known_hosts with another key for this host: refused, and the error
    // says it is the host key.
    let other_host = tmp.path().join("other_host_key");
    ssh_keygen(&other_host, "other host");
    let wrong_hosts = keys.join("known_hosts.wrong");
    let other_public = std::fs::read_to_string(other_host.with_extension("pub")).unwrap();
    std::fs::write(&wrong_hosts, sshd.known_hosts_line(&other_public)).unwrap();
    let bad_hosts = Mirror::open(
        spec(
            &url,
            Credentials::Ssh {
                private_key_file: key.clone(),
                known_hosts_file: wrong_hosts,
            },
        ),
        &tmp.path().join("mirrors-wrong-hosts"),
    )
    .await
    .unwrap();
    assert!(bad_hosts.head().is_none());
    let f = bad_hosts.status().last_failure.unwrap();
    eprintln!("wrong known_hosts: {:?}: {}", f.kind, f.message);
    assert_eq!(f.kind, FetchErrorKind::Auth, "{}", f.message);
    assert!(
        f.message.contains("host key verification")
            && f.message
                .contains("differs from the one in the known_hosts file")
            && f.message.contains("knownHostsFile"),
        "{}",
        f.message
    );

    // An empty known_hosts: refused, "no key for this host".
    let empty_hosts = keys.join("known_hosts.empty");
    std::fs::write(&empty_hosts, "").unwrap();
    let unknown_host = Mirror::open(
        spec(
            &url,
            Credentials::Ssh {
                private_key_file: key.clone(),
                known_hosts_file: empty_hosts,
            },
        ),
        &tmp.path().join("mirrors-empty-hosts"),
    )
    .await
    .unwrap();
    let f = unknown_host.status().last_failure.unwrap();
    eprintln!("empty known_hosts: {:?}: {}", f.kind, f.message);
    assert_eq!(f.kind, FetchErrorKind::Auth, "{}", f.message);
    assert!(f.message.contains("no key for this host"), "{}", f.message);

    // A key the server does not know: an authentication error.
    let bad_key = Mirror::open(
        spec(
            &url,
            Credentials::Ssh {
                private_key_file: stranger.clone(),
                known_hosts_file: known_hosts.clone(),
            },
        ),
        &tmp.path().join("mirrors-wrong-key"),
    )
    .await
    .unwrap();
    let f = bad_key.status().last_failure.unwrap();
    eprintln!("wrong key: {:?}: {}", f.kind, f.message);
    assert_eq!(f.kind, FetchErrorKind::Auth, "{}", f.message);
    assert!(
        f.message.contains("authentication to")
            && f.message.contains("Permission denied (publickey)"),
        "{}",
        f.message
    );

    // No key material anywhere we write or say.
    for (mirror, what) in [
        (&m, "status"),
        (&bad_hosts, "status (wrong known_hosts)"),
        (&unknown_host, "status (empty known_hosts)"),
        (&bad_key, "status (wrong key)"),
    ] {
        assert_no_material(&format!("{:?}", mirror.status()), what, &secrets);
    }
    for dir in [
        "mirrors",
        "mirrors-wrong-hosts",
        "mirrors-empty-hosts",
        "mirrors-wrong-key",
    ] {
        assert_no_material_in_files(&tmp.path().join(dir), &secrets);
    }
    let logs = captured_logs();
    assert!(logs.contains("fetch failed"), "the log capture works");
    assert_no_material(&logs, "the logs", &secrets);
}
