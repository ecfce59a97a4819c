//! Helpers for the webhook integration tests (`tests/webhook.rs`,
//! `tests/webhook_process.rs`): a test PKI (rcgen), a GitOps fixture with a
//! long, dated history (built on `tests/support`), configuration files,
//! AdmissionReview bodies shaped like the API server's, HTTPS clients that
//! trust only the test CA, capture of the JSON audit log, and a git remote
//! (`git://`) that can be switched to hang.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::support::{self, GitOps, Repo};

/// Every wait in these tests is bounded by this (or something shorter).
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM encoded, and the certificate's DER.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Leaf {
    /// certificate then key, as `reqwest::Identity::from_pem` wants them.
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .expect("client identity")
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A serving certificate for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> Leaf {
        self.issue(
            name,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (mTLS), e.g. for the API server.
    pub fn client(&self, name: &str) -> Leaf {
        self.issue(
            name,
            vec![name.to_string()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// A CA and a serving certificate written into a directory.
pub struct Pki {
    pub ca: Ca,
    pub leaf: Leaf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl Pki {
    pub fn write(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = Ca::new("stale-guard test CA");
        let leaf = ca.server("stale-guard.test");
        let cert_file = dir.join("tls.crt");
        let key_file = dir.join("tls.key");
        let ca_file = dir.join("ca.crt");
        std::fs::write(&cert_file, &leaf.cert_pem).unwrap();
        std::fs::write(&key_file, &leaf.key_pem).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            ca,
            leaf,
            cert_file,
            key_file,
            ca_file,
        }
    }
}

// ---------------------------------------------------------------------------
// HTTPS clients
// ---------------------------------------------------------------------------

/// Which HTTP version a client speaks (ALPN picks h2 when offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn version(self) -> reqwest::Version {
        match self {
            Proto::H1 => reqwest::Version::HTTP_11,
            Proto::H2 => reqwest::Version::HTTP_2,
        }
    }
}

/// A reqwest client builder that trusts only `ca_pem` (no built-in roots).
pub fn client_builder(ca_pem: &str, proto: Proto) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .https_only(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(WAIT);
    match proto {
        Proto::H1 => builder.http1_only(),
        // Offers h2 then http/1.1 in ALPN; the server picks h2.
        Proto::H2 => builder,
    }
}

pub fn client(ca_pem: &str, proto: Proto) -> reqwest::Client {
    client_builder(ca_pem, proto).build().unwrap()
}

/// A TLS connection to `addr` from the local address `from`, trusting only
/// `ca_pem` and offering one ALPN protocol (`h2` or `http/1.1`): for
/// clients that control every byte (HTTP/2 streams left open, bodies left
/// unfinished), from a chosen loopback address (all of 127.0.0.0/8 is
/// local on Linux).
pub async fn tls_connect(
    addr: &str,
    from: std::net::IpAddr,
    ca_pem: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(addr.parse().unwrap()).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
}

/// The answer to one POST /validate.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub uid: String,
    pub status: u16,
    pub version: reqwest::Version,
    pub body: Value,
}

impl Verdict {
    pub fn response(&self) -> &Value {
        &self.body["response"]
    }

    pub fn allowed(&self) -> bool {
        self.response()["allowed"]
            .as_bool()
            .unwrap_or_else(|| panic!("response.allowed is not a bool: {}", self.body))
    }

    pub fn message(&self) -> &str {
        self.response()["status"]["message"].as_str().unwrap_or("")
    }

    pub fn audit(&self, key: &str) -> Option<&str> {
        self.response()["auditAnnotations"][key].as_str()
    }

    pub fn audit_map(&self) -> HashMap<String, String> {
        self.response()["auditAnnotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.response()["warnings"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|w| w.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The envelope every answer must have: 200, v1 AdmissionReview, the uid.
    pub fn assert_envelope(&self) {
        assert_eq!(self.status, 200, "HTTP status; body {}", self.body);
        assert_eq!(
            self.body["apiVersion"], "admission.k8s.io/v1",
            "{}",
            self.body
        );
        assert_eq!(self.body["kind"], "AdmissionReview", "{}", self.body);
        assert_eq!(
            self.response()["uid"].as_str(),
            Some(self.uid.as_str()),
            "response.uid must echo the request uid: {}",
            self.body
        );
        let keys = self.audit_map();
        assert!(
            keys.contains_key("reason"),
            "auditAnnotations must carry reason: {}",
            self.body
        );
        for k in keys.keys() {
            assert!(
                !k.contains('/'),
                "audit annotation key {k:?} holds a '/' (the API server would drop it)"
            );
        }
    }

    /// A denial: allowed false, 403 Forbidden, message starting with `code`,
    /// `auditAnnotations.reason == code`. Returns the message.
    pub fn assert_denied(&self, code: &str) -> &str {
        self.assert_envelope();
        assert!(
            !self.allowed(),
            "expected a {code} denial, got {}",
            self.body
        );
        let status = &self.response()["status"];
        assert_eq!(status["code"], 403, "status.code: {}", self.body);
        assert_eq!(
            status["reason"], "Forbidden",
            "status.reason: {}",
            self.body
        );
        let msg = self.message();
        assert!(
            msg.starts_with(&format!("{code}: ")),
            "status.message must start with {code:?}: {msg:?}"
        );
        assert_eq!(self.audit("reason"), Some(code), "{}", self.body);
        msg
    }

    /// An allow with reason `code` (no denial status).
    pub fn assert_allowed(&self, code: &str) {
        self.assert_envelope();
        assert!(
            self.allowed(),
            "expected {code} (allowed), got {}",
            self.body
        );
        assert_eq!(self.audit("reason"), Some(code), "{}", self.body);
        let code_field = &self.response()["status"]["code"];
        assert!(
            code_field.is_null() || code_field == 200,
            "an allow carries no failure status: {}",
            self.body
        );
    }

    pub fn assert_version(&self, proto: Proto) {
        assert_eq!(self.version, proto.version(), "negotiated HTTP version");
    }
}

/// POSTs `review` to `base/validate` and parses the answer.
pub async fn post_review(client: &reqwest::Client, base: &str, review: &Review) -> Verdict {
    post_review_query(client, base, review, "").await
}

/// Like [`post_review`], with a query string (`?timeout=5s`).
pub async fn post_review_query(
    client: &reqwest::Client,
    base: &str,
    review: &Review,
    query: &str,
) -> Verdict {
    let resp = client
        .post(format!("{base}/validate{query}"))
        .json(&review.to_json())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /validate failed: {e:?}"));
    let status = resp.status().as_u16();
    let version = resp.version();
    let bytes = resp.bytes().await.expect("response body");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "the answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Verdict {
        uid: review.uid.clone(),
        status,
        version,
        body,
    }
}

// ---------------------------------------------------------------------------
// AdmissionReview bodies
// ---------------------------------------------------------------------------

pub const FLUX_USER: &str = "system:serviceaccount:flux-system:kustomize-controller";
pub const REVISION_KEY: &str = "stale-guard.io/revision";
pub const CHECKSUM_KEY: &str = "stale-guard.io/checksum";

static UID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique request uid (per process and call), used to find audit lines.
pub fn new_uid(tag: &str) -> String {
    let n = UID_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n:04}-7f3c2a9e", std::process::id())
}

/// An AdmissionReview request, shaped like what kube-apiserver sends for a
/// Flux server-side apply of an Ingress.
#[derive(Debug, Clone)]
pub struct Review {
    pub uid: String,
    pub operation: String,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub resource: String,
    pub sub_resource: Option<String>,
    pub name: String,
    pub namespace: String,
    pub username: String,
    pub groups: Vec<String>,
    pub annotations: Vec<(String, String)>,
    /// Replaces the whole `object` (e.g. to drop its metadata).
    pub object_override: Option<Value>,
    pub dry_run: bool,
}

impl Review {
    /// A CREATE of Ingress `web` in `namespace` by the Flux controller.
    pub fn ingress(tag: &str, namespace: &str) -> Review {
        Review {
            uid: new_uid(tag),
            operation: "CREATE".into(),
            group: "networking.k8s.io".into(),
            version: "v1".into(),
            kind: "Ingress".into(),
            resource: "ingresses".into(),
            sub_resource: None,
            name: "web".into(),
            namespace: namespace.into(),
            username: FLUX_USER.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:flux-system".into(),
                "system:authenticated".into(),
            ],
            annotations: vec![
                (
                    "nginx.ingress.kubernetes.io/proxy-body-size".into(),
                    "8m".into(),
                ),
                ("kustomize.toolkit.fluxcd.io/ssa".into(), "Merge".into()),
            ],
            object_override: None,
            dry_run: false,
        }
    }

    /// A server-side apply of `object` (its kind, name and namespace) by
    /// the Flux controller, without annotations of its own.
    pub fn of_object(tag: &str, object: &Value) -> Review {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let kind = object["kind"].as_str().unwrap_or("").to_owned();
        let mut review =
            Review::ingress(tag, object["metadata"]["namespace"].as_str().unwrap_or(""));
        review.group = group.into();
        review.version = version.into();
        review.resource = format!("{}s", kind.to_lowercase());
        review.kind = kind;
        review.name = object["metadata"]["name"].as_str().unwrap_or("").into();
        review.annotations.clear();
        review.object_override = Some(object.clone());
        review
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Review {
        self.annotations.retain(|(k, _)| k != key);
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// Both annotations under the default keys.
    pub fn stamped(self, revision: &str, checksum: &str) -> Review {
        self.annotate(REVISION_KEY, revision)
            .annotate(CHECKSUM_KEY, checksum)
    }

    pub fn operation(mut self, op: &str) -> Review {
        self.operation = op.into();
        self
    }

    pub fn user(mut self, username: &str, groups: &[&str]) -> Review {
        self.username = username.into();
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    pub fn sub_resource(mut self, sub: &str) -> Review {
        self.sub_resource = Some(sub.into());
        self
    }

    fn object(&self) -> Value {
        if let Some(o) = &self.object_override {
            return o.clone();
        }
        let annotations: serde_json::Map<String, Value> = self
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "apiVersion": format!("{}/{}", self.group, self.version),
            "kind": self.kind,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": "a41e7c52-93d0-4b6f-8e25-7c1d9f0b3e68",
                "generation": 1,
                "creationTimestamp": "2026-11-28T16:20:31Z",
                "labels": {
                    "app.kubernetes.io/name": "web",
                    "app.kubernetes.io/managed-by": "flux",
                    "kustomize.toolkit.fluxcd.io/name": "apps",
                    "kustomize.toolkit.fluxcd.io/namespace": "flux-system"
                },
                "annotations": annotations,
                "managedFields": [{
                    "manager": "kustomize-controller",
                    "operation": "Apply",
                    "apiVersion": "networking.k8s.io/v1",
                    "time": "2026-11-28T16:20:31Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:ingressClassName": {}, "f:rules": {}, "f:tls": {}}}
                }]
            },
            "spec": {
                "ingressClassName": "nginx-internal",
                "tls": [{"hosts": ["east.example.com"], "secretName": "web-tls"}],
                "rules": [{
                    "host": "east.example.com",
                    "http": {"paths": [{
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}}
                    }]}
                }]
            },
            "status": {"loadBalancer": {}}
        })
    }

    pub fn to_json(&self) -> Value {
        let gvk = json!({"group": self.group, "version": self.version, "kind": self.kind});
        let gvr = json!({"group": self.group, "version": self.version, "resource": self.resource});
        let (object, old_object, options) = match self.operation.as_str() {
            "DELETE" => (
                Value::Null,
                self.object(),
                json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
            ),
            "UPDATE" => (
                self.object(),
                self.object(),
                json!({"kind": "PatchOptions", "apiVersion": "meta.k8s.io/v1",
                       "fieldManager": "kustomize-controller", "force": true}),
            ),
            _ => (
                self.object(),
                Value::Null,
                json!({"kind": "PatchOptions", "apiVersion": "meta.k8s.io/v1",
                       "fieldManager": "kustomize-controller", "force": true}),
            ),
        };
        let mut request = json!({
            "uid": self.uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": self.name,
            "namespace": self.namespace,
            "operation": self.operation,
            "userInfo": {
                "username": self.username,
                "uid": "0d8a6b3e-5f21-4c7a-b9e4-12f6a8c3d095",
                "groups": self.groups,
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["kustomize-controller-7d9f8c6b5-x2kqp"]
                }
            },
            "object": object,
            "oldObject": old_object,
            "dryRun": self.dry_run,
            "options": options
        });
        if let Some(sub) = &self.sub_resource {
            request["subResource"] = Value::String(sub.clone());
            request["requestSubResource"] = Value::String(sub.clone());
        }
        json!({
            "kind": "AdmissionReview",
            "apiVersion": "admission.k8s.io/v1",
            "request": request
        })
    }
}

// ---------------------------------------------------------------------------
// the GitOps fixture
// ---------------------------------------------------------------------------

pub const EAST: &str = "overlays/prod/east";
pub const WEST: &str = "overlays/prod/west";
pub const BROKEN: &str = "overlays/prod/broken";
pub const DAY: i64 = 86_400;
/// Commits of the incident history added on top of the support fixture.
pub const INCIDENT_COMMITS: i64 = 20;

/// Commits with an explicit author and committer date (seconds since the epoch).
pub fn commit_at(repo: &Repo, msg: &str, epoch: i64) -> String {
    repo.git(&["add", "-A"]);
    let date = format!("{epoch} +0000");
    let out = support::git_command(repo.path())
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
    repo.head()
}

pub fn commit_time(repo: &Repo, rev: &str) -> i64 {
    repo.git(&["show", "-s", "--format=%ct", rev])
        .trim()
        .parse()
        .unwrap()
}

/// The overlay checksum at `rev`, from the crate's engine.
pub fn checksum_at(repo_dir: &Path, rev: &str, overlay: &str) -> String {
    let engine = stale_guard::checksum::ChecksumEngine::open(repo_dir).expect("open repo");
    let commit = engine.resolve_commit(rev).expect("resolve");
    engine
        .checksum(commit, overlay)
        .unwrap_or_else(|e| panic!("checksum of {overlay} at {rev}: {e}"))
        .checksum
        .to_string()
}

/// The origin repository and the revisions the tests use.
pub struct World {
    pub origin: GitOps,
    /// The commit that introduced `overlays/prod/east` (the 6-week-old
    /// revision of the incident).
    pub old: String,
    pub old_sum: String,
    /// `head~1`: the last commit only touched docs, so the east overlay is
    /// unchanged between it and head.
    pub prev: String,
    pub head: String,
    pub head_sum: String,
    /// The west overlay's checksum at head (a wrong one for east).
    pub west_sum: String,
    /// Scratch space outside the repository (mirror, certificates...).
    pub scratch: tempfile::TempDir,
}

impl World {
    /// The support fixture (nested overlay `overlays/prod/east` whose base
    /// is reached through the symlink `base -> ../../../bases/prod-east`),
    /// then an incident history: 20 commits over six weeks, changing the
    /// Ingress patch that is only reached through the symlinked base; an
    /// overlay with a missing base (`overlays/prod/broken`); and a last
    /// commit that only touches docs.
    pub fn build() -> World {
        let origin = support::gitops_repo();
        let r = &origin.repo;
        let old = r
            .git(&[
                "log",
                "--format=%H",
                "--diff-filter=A",
                "-1",
                "--",
                "overlays/prod/east/kustomization.yaml",
            ])
            .trim()
            .to_string();
        assert_eq!(old.len(), 40, "fixture: east overlay commit not found");
        let t_old = commit_time(r, &old);
        let step = 42 * DAY / INCIDENT_COMMITS;
        for k in 1..=INCIDENT_COMMITS {
            let date = t_old + k * step;
            match k {
                5 => {
                    r.write(
                        &format!("{BROKEN}/kustomization.yaml"),
                        "resources:\n- ../../../bases/prod-gone\n- ../east\n",
                    );
                }
                k if k == INCIDENT_COMMITS => {
                    r.append("docs/runbook.md", "3. Ask #platform when in doubt.\n");
                }
                k if k % 2 == 0 => {
                    let size = format!("{}m", 8 + k);
                    let patch =
                        String::from_utf8(r.read("bases/prod-east/patches/ingress-host.yaml"))
                            .unwrap();
                    let mut out = String::new();
                    for line in patch.lines() {
                        if line.contains("proxy-body-size:") {
                            out.push_str(&format!(
                                "    nginx.ingress.kubernetes.io/proxy-body-size: {size}\n"
                            ));
                        } else {
                            out.push_str(line);
                            out.push('\n');
                        }
                    }
                    r.write("bases/prod-east/patches/ingress-host.yaml", out);
                }
                _ => {
                    r.append("docs/runbook.md", format!("- change {k}\n"));
                }
            }
            commit_at(r, &format!("incident history {k}"), date);
        }
        let head = r.head();
        let prev = r.rev_parse("HEAD~1");
        let old_sum = checksum_at(r.path(), &old, EAST);
        let head_sum = checksum_at(r.path(), &head, EAST);
        let west_sum = checksum_at(r.path(), &head, WEST);
        assert_ne!(old_sum, head_sum, "the incident history must change east");
        assert_eq!(
            checksum_at(r.path(), &prev, EAST),
            head_sum,
            "the last commit must not change east"
        );
        World {
            origin,
            old,
            old_sum,
            prev,
            head,
            head_sum,
            west_sum,
            scratch: tempfile::Builder::new()
                .prefix("sg-webhook-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn repo(&self) -> &Repo {
        &self.origin.repo
    }

    /// `git rev-list --count from..to`.
    pub fn behind(&self, from: &str, to: &str) -> u64 {
        self.repo()
            .git(&["rev-list", "--count", &format!("{from}..{to}")])
            .trim()
            .parse()
            .unwrap()
    }

    /// Whole days between the committer times of `from` and `to`.
    pub fn days_between(&self, from: &str, to: &str) -> i64 {
        (commit_time(self.repo(), to) - commit_time(self.repo(), from)) / DAY
    }

    /// A default configuration for this world: source `gitops` is the
    /// origin (a local path); rules by namespace:
    /// `prod-apps` strict/enforce, `content-apps` content, `warn-apps` warn,
    /// `audit-apps` audit, `broken-apps` the broken overlay.
    pub fn config(&self) -> ConfigBuilder {
        let mut c = ConfigBuilder::new(self.scratch.path());
        c.source("gitops", self.repo().path_str(), "1h");
        c.rule(
            "prod-east",
            "prod-apps",
            "gitops",
            EAST,
            "enforce",
            "strict",
        );
        c.rule(
            "content-east",
            "content-apps",
            "gitops",
            EAST,
            "enforce",
            "content",
        );
        c.rule("warn-east", "warn-apps", "gitops", EAST, "warn", "strict");
        c.rule(
            "audit-east",
            "audit-apps",
            "gitops",
            EAST,
            "audit",
            "strict",
        );
        c.rule(
            "broken",
            "broken-apps",
            "gitops",
            BROKEN,
            "enforce",
            "strict",
        );
        c
    }
}

// ---------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------

/// Builds a `serve --config` YAML document.
pub struct ConfigBuilder {
    pub dir: PathBuf,
    pub listen: String,
    pub sources: Vec<String>,
    pub rules: Vec<String>,
    pub annotations: Option<(String, String)>,
    pub break_glass: String,
    pub failure: String,
    /// The `limits:` flow mapping, when set.
    pub limits: Option<String>,
    /// `probes.listen`, when set.
    pub probes: Option<String>,
    pub client_ca: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Top-level YAML appended as given (e.g. a `render:` block).
    pub extra: String,
    /// The `receiver:` flow mapping, when set.
    pub receiver: Option<String>,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl ConfigBuilder {
    /// Certificates and the mirror go under `dir`.
    pub fn new(dir: &Path) -> ConfigBuilder {
        ConfigBuilder {
            dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".into(),
            sources: Vec::new(),
            rules: Vec::new(),
            annotations: None,
            break_glass: "{ users: [\"oncall@corp.example.com\"], groups: [\"sre-break-glass\"] }"
                .into(),
            failure: "{ mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 4s }"
                .into(),
            limits: None,
            probes: None,
            client_ca: None,
            cert_file: None,
            key_file: None,
            extra: String::new(),
            receiver: None,
        }
    }

    pub fn source(&mut self, name: &str, url: &str, poll: &str) -> &mut Self {
        self.source_with(name, url, poll, "30s")
    }

    pub fn source_with(
        &mut self,
        name: &str,
        url: &str,
        poll: &str,
        fetch_timeout: &str,
    ) -> &mut Self {
        self.sources.push(format!(
            "  - {{ name: {name}, url: {}, branch: main, pollInterval: {poll}, fetchTimeout: {fetch_timeout} }}\n",
            q(url)
        ));
        self
    }

    pub fn rule(
        &mut self,
        name: &str,
        namespace: &str,
        source: &str,
        overlay: &str,
        mode: &str,
        staleness: &str,
    ) -> &mut Self {
        self.rules.push(format!(
            "  - name: {name}\n    match: {{ namespaces: [{namespace}] }}\n    source: {source}\n    overlay: {}\n    mode: {mode}\n    staleness: {staleness}\n",
            q(overlay)
        ));
        self
    }

    pub fn checksum_key(&mut self, key: &str) -> &mut Self {
        self.annotations = Some((REVISION_KEY.into(), key.into()));
        self
    }

    pub fn failure(&mut self, failure: &str) -> &mut Self {
        self.failure = failure.into();
        self
    }

    pub fn limits(&mut self, limits: &str) -> &mut Self {
        self.limits = Some(limits.into());
        self
    }

    /// The YAML, with the TLS file paths given.
    pub fn yaml(&self, cert_file: &Path, key_file: &Path) -> String {
        let cert_file = self.cert_file.as_deref().unwrap_or(cert_file);
        let key_file = self.key_file.as_deref().unwrap_or(key_file);
        let mut y = String::new();
        y.push_str(&format!("listen: {}\n", q(&self.listen)));
        y.push_str(&format!(
            "tls:\n  certFile: {}\n  keyFile: {}\n",
            q(cert_file.to_str().unwrap()),
            q(key_file.to_str().unwrap())
        ));
        if let Some(ca) = &self.client_ca {
            y.push_str(&format!("  clientCAFile: {}\n", q(ca.to_str().unwrap())));
        }
        y.push_str(&format!(
            "mirrorDir: {}\n",
            q(self.dir.join("mirror").to_str().unwrap())
        ));
        if let Some((rev, sum)) = &self.annotations {
            y.push_str(&format!(
                "annotations: {{ revision: {}, checksum: {} }}\n",
                q(rev),
                q(sum)
            ));
        }
        y.push_str("sources:\n");
        for s in &self.sources {
            y.push_str(s);
        }
        y.push_str("rules:\n");
        for r in &self.rules {
            y.push_str(r);
        }
        y.push_str(&format!("breakGlass: {}\n", self.break_glass));
        y.push_str(&format!("failure: {}\n", self.failure));
        if let Some(limits) = &self.limits {
            y.push_str(&format!("limits: {limits}\n"));
        }
        if let Some(listen) = &self.probes {
            y.push_str(&format!("probes: {{ listen: {} }}\n", q(listen)));
        }
        y.push_str(&self.extra);
        if let Some(receiver) = &self.receiver {
            y.push_str(&format!("receiver: {receiver}\n"));
        }
        y
    }
}

// ---------------------------------------------------------------------------
// the in-process server
// ---------------------------------------------------------------------------

/// A real server (`server::start`) on an ephemeral loopback port.
pub struct Server {
    pub running: Option<stale_guard::server::Running>,
    pub base: String,
    pub pki: Pki,
    pub yaml: String,
}

impl Server {
    /// Starts the server and waits (bounded) until every source has synced
    /// or failed its first fetch: the listener opens before any clone.
    pub async fn start(config: &ConfigBuilder) -> Server {
        let srv = Server::start_serving(config).await;
        let state = srv.running.as_ref().unwrap().state.clone();
        eventually(
            Duration::from_secs(60),
            "every source's first fetch",
            || {
                let done = state.first_fetches_done();
                async move { done.then_some(()) }
            },
        )
        .await;
        srv
    }

    /// Starts the server and returns as soon as it serves, whatever its
    /// sources' first fetches are doing.
    pub async fn start_serving(config: &ConfigBuilder) -> Server {
        init_audit_capture();
        let pki = Pki::write(&config.dir.join(format!("tls-{}", new_uid("pki"))));
        let yaml = config.yaml(&pki.cert_file, &pki.key_file);
        let parsed = stale_guard::config::Config::parse(&yaml)
            .unwrap_or_else(|e| panic!("config refused: {e}\n{yaml}"));
        let running = tokio::time::timeout(
            Duration::from_secs(60),
            stale_guard::server::start(parsed, stale_guard::tls::ServeOptions::default()),
        )
        .await
        .expect("server::start did not return within 60s")
        .expect("server::start failed");
        let base = format!("https://{}", running.local_addr);
        Server {
            running: Some(running),
            base,
            pki,
            yaml,
        }
    }

    pub fn client(&self, proto: Proto) -> reqwest::Client {
        client(&self.pki.ca.pem(), proto)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client(Proto::H2)
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Stops the server and waits (bounded) for it to drain.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown.trigger();
            let joined = tokio::time::timeout(WAIT, running.task)
                .await
                .expect("server did not stop within 20s");
            joined.expect("server task panicked").expect("serve failed");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.trigger();
        }
    }
}

// ---------------------------------------------------------------------------
// the server as a process
// ---------------------------------------------------------------------------

/// A running `stale-guard serve`.
pub struct SgProcess {
    pub child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pub addr: String,
}

impl SgProcess {
    /// Spawns the binary and waits (bounded) until it serves and its
    /// sources have synced once (for tests whose mirrors are all new).
    pub fn spawn(config_file: &Path) -> SgProcess {
        Self::start(config_file, true)
    }

    /// Spawns the binary and waits (bounded) only for its "serving" line:
    /// for drills whose first sync fails or finds nothing new.
    pub fn spawn_serving(config_file: &Path) -> SgProcess {
        Self::start(config_file, false)
    }

    fn start(config_file: &Path, wait_for_sync: bool) -> SgProcess {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stale-guard"))
            .arg("serve")
            .arg("--config")
            .arg(config_file)
            .env("RUST_LOG", "info,stale_guard::audit=debug")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stale-guard serve");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                stdout.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut p = SgProcess {
            child,
            stdout,
            stderr,
            addr: String::new(),
        };
        let start = Instant::now();
        loop {
            // The listener opens before the first clone: wait for both (the
            // tests' mirrors are all new, so synced means "new head").
            if let Some(addr) = p.serving_addr()
                && (!wait_for_sync || p.logged("new head"))
            {
                p.addr = addr;
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "stale-guard serve exited ({status}) before serving\nstdout:\n{}\nstderr:\n{}",
                    p.stdout_text(),
                    p.stderr_text()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "no \"stale-guard webhook serving\" and \"new head\" lines within {WAIT:?}\nstdout:\n{}\nstderr:\n{}",
                p.stdout_text(),
                p.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Whether a log line with this message was written.
    pub fn logged(&self, message: &str) -> bool {
        self.json_lines()
            .iter()
            .any(|v| fields(v)["message"] == message)
    }

    pub fn serving_addr(&self) -> Option<String> {
        self.logged_addr("stale-guard webhook serving")
    }

    /// The `local_addr` of the first log line with this message.
    pub fn logged_addr(&self, message: &str) -> Option<String> {
        self.json_lines().iter().find_map(|v| {
            let f = fields(v);
            (f["message"] == message).then(|| {
                f["local_addr"]
                    .as_str()
                    .expect("local_addr field")
                    .to_string()
            })
        })
    }

    /// Resident memory of the server process (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Peak resident memory of the server process (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    fn status_kib(&self, field: &str) -> u64 {
        support::proc_status_kib(self.child.id(), field)
    }

    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Everything it wrote, stdout then stderr.
    pub fn log(&self) -> String {
        format!("{}\n{}", self.stdout_text(), self.stderr_text())
    }

    /// SIGKILL (this process only) and reap it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// `kill -TERM <pid>` (this process only).
    pub fn sigterm(&self) {
        let st = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits at most `limit` for the exit; kills it (and fails) otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "stale-guard did not exit within {limit:?} of SIGTERM\nstdout:\n{}",
                    self.stdout_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SgProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes the configuration and a fresh PKI (or uses the given cert/key).
pub fn write_config(dir: &Path, config: &ConfigBuilder, pki: &Pki) -> PathBuf {
    let yaml = config.yaml(&pki.cert_file, &pki.key_file);
    stale_guard::config::Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let path = dir.join("stale-guard.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

// ---------------------------------------------------------------------------
// audit log capture (in-process)
// ---------------------------------------------------------------------------

static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test process) a global JSON subscriber, formatted as
/// `stale-guard serve` formats its log, writing into a shared buffer.
pub fn init_audit_capture() {
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .json()
            .with_current_span(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,stale_guard::audit=debug",
            ))
            .with_writer(move || LogWriter(writer.clone()))
            .try_init()
            .expect("the audit capture must be the only global subscriber");
        buf
    });
}

/// The event fields of a JSON log line (`fields` object, or flattened).
pub fn fields(line: &Value) -> &Value {
    if line.get("fields").is_some() {
        &line["fields"]
    } else {
        line
    }
}

/// Captured JSON log lines whose `uid` field is `uid`.
pub fn audit_lines(uid: &str) -> Vec<Value> {
    let Some(buf) = LOG.get() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(uid))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| fields(v)["uid"].as_str() == Some(uid))
        .collect()
}

/// The one audit line for `uid` (bounded wait), checked: target, level
/// WARN, reason, allowed. Returns its fields.
pub async fn audit_line(uid: &str, reason: &str, allowed: bool) -> Value {
    let start = Instant::now();
    loop {
        let lines = audit_lines(uid);
        if !lines.is_empty() {
            assert_eq!(lines.len(), 1, "one audit line per review: {lines:?}");
            let line = &lines[0];
            assert_eq!(line["target"], "stale_guard::audit", "{line}");
            assert_eq!(line["level"], "WARN", "non-allows log at warn: {line}");
            let f = fields(line).clone();
            assert_eq!(f["reason"], reason, "{line}");
            assert_eq!(f["allowed"], allowed, "{line}");
            return f;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no audit line for uid {uid}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that no WARN audit line was written for `uid` (plain allows are
/// logged at debug only).
pub fn assert_no_warn_audit(uid: &str) {
    for line in audit_lines(uid) {
        assert_ne!(
            line["level"], "WARN",
            "a plain allow logged as a denial: {line}"
        );
    }
}

// ---------------------------------------------------------------------------
// a git:// remote that can hang
// ---------------------------------------------------------------------------

/// A `git://127.0.0.1:PORT/<name>` remote: each connection is served by
/// `git daemon --inetd` over `base_path`, or, once [`hang`](Self::hang) is
/// set, accepted and never answered.
pub struct GitRemote {
    pub addr: SocketAddr,
    hang: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    children: Arc<Mutex<Vec<Child>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl GitRemote {
    pub fn start(base_path: &Path) -> GitRemote {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hang = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let children: Arc<Mutex<Vec<Child>>> = Arc::new(Mutex::new(Vec::new()));
        let base_path = base_path.to_path_buf();
        let (h, s, hd, ch) = (hang.clone(), stop.clone(), held.clone(), children.clone());
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if h.load(Ordering::SeqCst) {
                    hd.lock().unwrap().push(conn);
                    continue;
                }
                let mut cmd = support::git_command(&base_path);
                cmd.args(["daemon", "--inetd", "--export-all", "--informative-errors"])
                    .arg(format!("--base-path={}", base_path.display()))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                let Ok(mut child) = cmd.spawn() else { continue };
                let mut stdin = child.stdin.take().unwrap();
                let mut stdout = child.stdout.take().unwrap();
                let mut from_client = conn.try_clone().unwrap();
                let mut to_client = conn;
                // Plain read/write loops (std::io::copy may splice, and a
                // splice from a socket can wait for more than is available).
                thread::spawn(move || {
                    pump(&mut from_client, &mut stdin);
                });
                thread::spawn(move || {
                    pump(&mut stdout, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                });
                let mut kids = ch.lock().unwrap();
                kids.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                kids.push(child);
            }
        });
        GitRemote {
            addr,
            hang,
            stop,
            held,
            children,
            accept: Some(accept),
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://{}/{name}", self.addr)
    }

    /// From now on, connections are accepted and never answered.
    pub fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
    }

    /// Connections held open (never answered) so far.
    pub fn hung_connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for GitRemote {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self.held.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for mut c in self.children.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Copies until end of input or an error, writing each chunk as it comes.
fn pump(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads everything from a reader into a string (lossy).
pub fn read_all(mut r: impl Read) -> String {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
