//! `stale-guard demo`: the incident, replayed on this machine with nothing
//! but git. Builds a GitOps repository (a nested overlay whose base is
//! reached through a symlink, six weeks of history), generates
//! certificates, starts the real webhook on loopback over TLS, and sends
//! three applies through real HTTPS requests; with kustomize (or kubectl)
//! on the PATH, a fourth without any annotation, checked by its content.

use crate::checksum::ChecksumEngine;
use crate::config::Config;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

const OVERLAY: &str = "overlays/prod/east";
const REVISION_KEY: &str = "stale-guard.io/revision";
/// The incident's key: it must be read whole, never split on its dots.
const CHECKSUM_KEY: &str = "fluxcd.io/checksum";
const DAY: i64 = 86_400;
/// The pipeline that cannot stamp: its applies carry no annotation.
const ARGO_USER: &str = "system:serviceaccount:argocd:argocd-application-controller";

/// What the demo printed, for the caller to decide the exit code.
pub struct Outcome {
    pub as_expected: bool,
}

pub async fn run(serve: bool) -> anyhow::Result<Outcome> {
    let audit = AuditCapture::install();
    let work = tempfile::Builder::new()
        .prefix("stale-guard-demo.")
        .tempdir()?;
    let dir = work.path().to_path_buf();
    let mut out = std::io::stdout();

    writeln!(
        out,
        "stale-guard demo: the incident, replayed on this machine\n"
    )?;
    let repo = dir.join("gitops");
    let history = build_repository(&repo).context("building the demo repository with git")?;
    let engine = ChecksumEngine::open(&repo)?;
    let sum_at = |commit: &str| -> anyhow::Result<String> {
        let id = engine.resolve_commit(commit)?;
        Ok(engine.checksum(id, OVERLAY)?.checksum.to_string())
    };
    let head_sum = sum_at(&history.head)?;
    let old_sum = sum_at(&history.old)?;
    writeln!(
        out,
        "  repository  {} ({} commits over 42 days)\n              {OVERLAY} -> overlays/prod/common -> bases/linked -> bases/prod-east (a symlink)",
        repo.display(),
        history.commits
    )?;

    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let bundle = crate::certs::generate(
        "stale-guard demo CA",
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )?;
    std::fs::write(certs.join("ca.crt"), &bundle.ca_pem)?;
    std::fs::write(certs.join("tls.crt"), &bundle.cert_pem)?;
    std::fs::write(certs.join("tls.key"), &bundle.key_pem)?;

    // Content verification needs a kustomize to render with.
    let render_command = render_command();
    let content_rule = match &render_command {
        Some(command) => format!(
            r#"
  - name: prod-east-content
    match: {{ namespaces: [prod-apps], kinds: [Ingress], users: ["{ARGO_USER}"] }}
    source: gitops
    overlay: {OVERLAY}
    provenance: none
    content: verify
render: {{ command: {command:?}, history: 40 }}
"#
        ),
        None => String::new(),
    };
    let config = Config::parse(&format!(
        r#"
listen: "127.0.0.1:0"
tls: {{ certFile: "{certs}/tls.crt", keyFile: "{certs}/tls.key" }}
mirrorDir: "{mirrors}"
annotations: {{ revision: {REVISION_KEY}, checksum: {CHECKSUM_KEY} }}
sources:
  - {{ name: gitops, url: "{repo}", branch: main, pollInterval: 5s }}
rules:
  - name: prod-east
    match: {{ namespaces: [prod-apps], kinds: [Ingress], users: ["system:serviceaccount:flux-system:kustomize-controller"] }}
    source: gitops
    overlay: {OVERLAY}
{content_rule}"#,
        certs = certs.display(),
        mirrors = dir.join("mirrors").display(),
        repo = repo.display(),
    ))?;
    let running = crate::server::start(config, crate::tls::ServeOptions::default()).await?;
    let url = format!("https://127.0.0.1:{}/validate", running.local_addr.port());
    writeln!(
        out,
        "  webhook     {url}\n              TLS with a fresh CA ({}), the real server, over HTTP/2\n",
        certs.join("ca.crt").display()
    )?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes())?)
        .build()?;
    wait_ready(&client, &url).await?;

    let flux =
        |annotations: Vec<(&'static str, String)>| review_body(FLUX_USER, ingress(&annotations));
    let mut applies = vec![
        Apply {
            title: "The fresh apply: rendered from the head, with its checksum".to_owned(),
            body: flux(vec![
                (REVISION_KEY, format!("main@sha1:{}", history.head)),
                (CHECKSUM_KEY, head_sum.clone()),
            ]),
            expect: ("Fresh", true),
        },
        Apply {
            title: format!(
                "The incident: a six-week-old revision {} with its (then correct) checksum",
                &history.old[..7]
            ),
            body: flux(vec![
                (REVISION_KEY, format!("main@sha1:{}", history.old)),
                (CHECKSUM_KEY, old_sum),
            ]),
            expect: ("StaleRevision", false),
        },
        Apply {
            title: format!(
                "A controller that split the key {CHECKSUM_KEY:?} on its dots and stored \"fluxcd\""
            ),
            body: flux(vec![
                (REVISION_KEY, format!("main@sha1:{}", history.head)),
                ("fluxcd", head_sum),
            ]),
            expect: ("MissingChecksum", false),
        },
    ];
    match render_command {
        Some(command) => {
            // The six-week-old Ingress as kustomize renders it, as the API
            // server would pass it on: no annotation at all.
            let old_ingress = rendered_ingress(&repo, &history.old, command).await?;
            applies.push(Apply {
                title: format!(
                    "A pipeline that cannot stamp: no annotation at all, the Ingress as rendered at {}",
                    &history.old[..7]
                ),
                body: review_body(ARGO_USER, as_admitted(old_ingress)),
                expect: ("ContentMismatch", false),
            });
            // The mismatch names the earlier rendering it matches: wait
            // until they are rendered (in the background, after start).
            let state = running.state.clone();
            let started = std::time::Instant::now();
            while !state.renderings_ready()
                && started.elapsed() < std::time::Duration::from_secs(60)
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        None => writeln!(
            out,
            "(content verification skipped: neither kustomize nor kubectl is on the PATH)\n"
        )?,
    }
    let mut as_expected = true;
    for (i, apply) in applies.iter().enumerate() {
        let mut body = apply.body.clone();
        body["request"]["uid"] = serde_json::Value::String(format!("demo-{}", i + 1));
        std::fs::write(dir.join(format!("review-{}.json", i + 1)), body.to_string())?;
        let answer: serde_json::Value = client
            .post(&url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let response = &answer["response"];
        let allowed = response["allowed"].as_bool().unwrap_or(false);
        let reason = response["auditAnnotations"]["reason"]
            .as_str()
            .unwrap_or("?");
        let message = response["status"]["message"].as_str().unwrap_or("");
        writeln!(out, "{}. {}", i + 1, apply.title)?;
        if allowed {
            writeln!(out, "   -> allowed  ({reason})\n")?;
        } else {
            writeln!(
                out,
                "   -> DENIED   Error from server (Forbidden): {message}\n"
            )?;
        }
        as_expected &= (reason, allowed) == apply.expect;
    }

    writeln!(
        out,
        "The denial log lines (JSON, one per verdict that is not a plain allow):"
    )?;
    for line in audit.lines() {
        writeln!(out, "  {line}")?;
    }
    if !as_expected {
        writeln!(
            out,
            "\nUNEXPECTED: a verdict differed from the one expected above."
        )?;
    }

    if serve {
        writeln!(
            out,
            "\nThe webhook keeps running (Ctrl-C stops it). Try:\n  curl --cacert {ca} -H 'Content-Type: application/json' --data-binary @{review} {url}\n(review-1.json is fresh, review-2.json six weeks old, review-3.json has the split key, review-4.json, when there, has no annotation and a six-week-old body)",
            ca = certs.join("ca.crt").display(),
            review = dir.join("review-2.json").display(),
        )?;
        out.flush()?;
        tokio::signal::ctrl_c().await?;
    }
    running.shutdown.trigger();
    running.task.await??;
    Ok(Outcome { as_expected })
}

struct Apply {
    title: String,
    body: serde_json::Value,
    expect: (&'static str, bool),
}

const FLUX_USER: &str = "system:serviceaccount:flux-system:kustomize-controller";

/// `[kustomize, build]` when kustomize is on the PATH, else `[kubectl,
/// kustomize]` when kubectl is, else none.
fn render_command() -> Option<[&'static str; 2]> {
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs("kustomize", "version") {
        Some(["kustomize", "build"])
    } else if runs("kubectl", "version") || runs("kubectl", "help") {
        Some(["kubectl", "kustomize"])
    } else {
        None
    }
}

/// The demo Ingress as `command` renders the overlay at `rev`.
async fn rendered_ingress(
    repo: &Path,
    rev: &str,
    command: [&str; 2],
) -> anyhow::Result<serde_json::Value> {
    let engine = ChecksumEngine::open(repo)?;
    let commit = engine.resolve_commit(rev)?;
    let sum = engine.checksum(commit, OVERLAY)?;
    let settings = crate::config::RenderConfig {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        ..crate::config::RenderConfig::default()
    }
    .settings();
    let renderer = crate::render::Renderer::new(settings);
    let rendering = renderer
        .render(engine, commit, OVERLAY, sum.checksum)
        .await
        .map_err(|e| anyhow::anyhow!("rendering {OVERLAY} at {rev}: {e}"))?;
    let id = crate::content::Identity {
        group: "networking.k8s.io".to_owned(),
        kind: "Ingress".to_owned(),
        namespace: Some("prod-apps".to_owned()),
        name: "web".to_owned(),
    };
    rendering
        .find(&id)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the rendering at {rev} has no Ingress prod-apps/web"))
}

/// What the API server adds to an object before admission.
fn as_admitted(mut object: serde_json::Value) -> serde_json::Value {
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.insert("uid".into(), "3b1f6a2e-0c4d-4e8a-9f57-2d6c1b8e7a90".into());
        meta.insert("resourceVersion".into(), "48213".into());
        meta.insert("generation".into(), 7.into());
        meta.insert("creationTimestamp".into(), "2026-10-25T09:12:44Z".into());
    }
    object["status"] = serde_json::json!({"loadBalancer": {}});
    object
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let ready = url.replace("/validate", "/readyz");
    for _ in 0..100 {
        if let Ok(r) = client.get(&ready).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("the webhook did not become ready within 10 s")
}

/// The demo Ingress with `annotations`, as a stamping pipeline applies it.
fn ingress(annotations: &[(&str, String)]) -> serde_json::Value {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "prod-apps", "annotations": annotations},
        "spec": {"rules": [{"host": "east.example.com"}]}
    })
}

/// An AdmissionReview of a server-side apply of `object` (the demo
/// Ingress) by `user`.
fn review_body(user: &str, object: serde_json::Value) -> serde_json::Value {
    let group = user.rsplit_once(':').map_or("", |(g, _)| g);
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "",
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
            "name": "web",
            "namespace": "prod-apps",
            "operation": "UPDATE",
            "userInfo": {
                "username": user,
                "groups": ["system:serviceaccounts", group.replace("system:serviceaccount:", "system:serviceaccounts:")]
            },
            "object": object,
            "dryRun": false
        }
    })
}

struct History {
    old: String,
    head: String,
    commits: usize,
}

/// The demo repository: an overlay three levels deep whose base is reached
/// through a symlink outside it, and six weeks of history.
fn build_repository(repo: &Path) -> anyhow::Result<History> {
    std::fs::create_dir_all(repo)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let write = |path: &str, text: &str| -> anyhow::Result<()> {
        let p = repo.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, text)?;
        Ok(())
    };
    git(repo, &["init", "-q", "-b", "main"], None)?;
    write(
        "bases/prod-east/kustomization.yaml",
        "resources: [ingress.yaml]\nconfigMapGenerator:\n  - name: web-config\n    files: [app.properties]\n",
    )?;
    write("bases/prod-east/app.properties", "upstream=v1\n")?;
    write(
        "overlays/prod/common/kustomization.yaml",
        "resources: [../../../bases/linked]\nlabels:\n  - pairs: {env: prod}\n",
    )?;
    write(
        &format!("{OVERLAY}/kustomization.yaml"),
        "resources: [../common]\nnamespace: prod-apps\n",
    )?;
    write("README.md", "# demo GitOps repository\n")?;
    std::os::unix::fs::symlink("prod-east", repo.join("bases/linked"))?;
    let ingress = |version: usize| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n  rules:\n    - host: east.example.com\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: {{service: {{name: web-v{version}, port: {{number: 80}}}}}}\n"
        )
    };
    let commits = 37;
    let mut old = String::new();
    for i in 0..commits {
        write("bases/prod-east/ingress.yaml", &ingress(i + 1))?;
        if i % 5 == 4 {
            write(
                "bases/prod-east/app.properties",
                &format!("upstream=v{}\n", i + 1),
            )?;
        }
        let when = now - 42 * DAY + (i as i64) * (42 * DAY / commits as i64);
        git(repo, &["add", "-A"], None)?;
        git(
            repo,
            &[
                "commit",
                "-q",
                "-m",
                &format!("web: route to web-v{}", i + 1),
            ],
            Some(when),
        )?;
        if i == 0 {
            old = git(repo, &["rev-parse", "HEAD"], None)?;
        }
    }
    let head = git(repo, &["rev-parse", "HEAD"], None)?;
    Ok(History { old, head, commits })
}

/// Runs git isolated from the user's configuration.
fn git(repo: &Path, args: &[&str], date: Option<i64>) -> anyhow::Result<String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=stale-guard demo",
            "-c",
            "user.email=demo@example.com",
        ])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    if let Some(t) = date {
        let d = format!("@{t} +0000");
        cmd.env("GIT_AUTHOR_DATE", &d).env("GIT_COMMITTER_DATE", &d);
    }
    let output = cmd
        .output()
        .context("running git (is it installed and on the PATH?)")?;
    if !output.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Collects the audit lines the server logs, to print them after the
/// verdicts instead of interleaved with them.
#[derive(Clone, Default)]
struct AuditCapture(Arc<Mutex<Vec<u8>>>);

impl AuditCapture {
    fn install() -> AuditCapture {
        use tracing_subscriber::prelude::*;
        let capture = AuditCapture::default();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(capture.clone())
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(crate::audit::TARGET, tracing::Level::WARN),
            );
        let _ = tracing_subscriber::registry().with(layer).try_init();
        capture
    }

    fn lines(&self) -> Vec<String> {
        let buf = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&buf)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for AuditCapture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AuditCapture {
    type Writer = AuditCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
