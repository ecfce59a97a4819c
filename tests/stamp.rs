//! `stale-guard stamp` and `stale-guard verify` on a real git fixture,
//! rendered with `kubectl kustomize` (required: these tests fail, never
//! skip, without it), then checked by the real webhook over TLS.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use serde_yaml_ng::Value;
use support::Repo;

const OVERLAY: &str = "overlays/prod/east";
const REV_KEY: &str = "stale-guard.io/revision";
const SUM_KEY: &str = "stale-guard.io/checksum";
const NAMESPACE: &str = "prod-apps";

/// A GitOps repository: the east overlay reaches its base through the
/// symlink `overlays/prod/east/base -> ../../../bases/web`.
struct Fixture {
    repo: Repo,
    /// The first commit.
    old: String,
    /// A commit that changed the base (so the overlay), then head, which
    /// only touches docs.
    changed: String,
    head: String,
}

fn fixture() -> Fixture {
    let r = Repo::new();
    r.write("README.md", "# gitops\n");
    r.write(
        "bases/web/kustomization.yaml",
        "resources:\n- deployment.yaml\n- service.yaml\nconfigMapGenerator:\n- name: web-config\n  literals:\n  - mode=on\n  - port=8080\n",
    );
    r.write(
        "bases/web/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.27.0\n        args: [\"--port\", \"8080\"]\n",
    );
    r.write(
        "bases/web/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations:\n    team: platform\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    r.symlink("overlays/prod/east/base", "../../../bases/web");
    r.write(
        "overlays/prod/east/kustomization.yaml",
        "namespace: prod-apps\nresources:\n- base\n- ingress.yaml\n",
    );
    r.write(
        "overlays/prod/east/ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n  rules:\n  - host: east.example.com\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service:\n            name: web\n            port:\n              number: 80\n",
    );
    let old = r.commit("initial");
    r.write("docs/runbook.md", "1. Look at the dashboards.\n");
    r.commit("docs");
    // A change reached only through the symlinked base.
    let deploy = String::from_utf8(r.read("bases/web/deployment.yaml")).unwrap();
    r.write(
        "bases/web/deployment.yaml",
        deploy.replace("nginx:1.27.0", "nginx:1.27.3"),
    );
    let changed = r.commit("bump nginx");
    r.append("README.md", "Render with kubectl kustomize.\n");
    let head = r.commit("readme");
    Fixture {
        repo: r,
        old,
        changed,
        head,
    }
}

/// The engine's checksum at `rev`, via `stale-guard checksum`.
fn checksum(repo: &Repo, rev: &str) -> String {
    support::checksum(repo, OVERLAY, Some(rev))
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `input` on stdin; killed (and the test failed)
/// after 60 s.
fn run(args: &[&str], input: &str) -> Out {
    use std::io::Read as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_stale-guard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .spawn()
        .expect("spawn stale-guard");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stale-guard {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    writer.join().unwrap();
    let o = Out {
        code: status.code().expect("stale-guard killed by a signal"),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
    };
    assert!(
        o.code != 101 && !o.stderr.contains("panicked"),
        "stale-guard {args:?} panicked:\n{}",
        o.stderr
    );
    o
}

fn stamp(repo: &Path, rev: Option<&str>, extra: &[&str], input: &str) -> Out {
    let repo = repo.to_str().unwrap();
    let mut args = vec!["stamp", "--repo", repo, "--overlay", OVERLAY];
    if let Some(rev) = rev {
        args.extend(["--rev", rev]);
    }
    args.extend(extra);
    run(&args, input)
}

fn verify(repo: &Path, input: &str) -> Out {
    let repo = repo.to_str().unwrap();
    run(
        &["verify", "--repo", repo, "--overlay", OVERLAY, "-"],
        input,
    )
}

fn docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every object: list items flattened.
fn objects(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .flat_map(|d| {
            if d["kind"].as_str() == Some("List") {
                d["items"].as_sequence().unwrap().clone()
            } else {
                vec![d.clone()]
            }
        })
        .collect()
}

fn ident(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o["metadata"]["annotations"][key].as_str()
}

/// Removes the two annotations (and an annotation map left empty).
fn strip(v: &mut Value) {
    if v["kind"].as_str() == Some("List") {
        for item in v["items"].as_sequence_mut().unwrap() {
            strip(item);
        }
        return;
    }
    let meta = v["metadata"].as_mapping_mut().unwrap();
    let ann = meta["annotations"].as_mapping_mut().unwrap();
    ann.remove(REV_KEY);
    ann.remove(SUM_KEY);
    if ann.is_empty() {
        meta.remove("annotations");
    }
}

const LIST_DOC: &str = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: listed-a\n    namespace: prod-apps\n  data:\n    b: \"2\"\n    a: \"1\"\n- apiVersion: v1\n  kind: Secret\n  metadata:\n    name: listed-b\n    namespace: prod-apps\n    annotations:\n      keep: me\n  stringData:\n    token: x\n";

fn rendered(repo: &Path) -> String {
    // kubectl is required: kustomize_dir panics when it cannot be run.
    support::kustomize_dir(repo, OVERLAY).unwrap_or_else(|e| panic!("kubectl kustomize: {e}"))
}

#[test]
fn stamp_annotates_every_object_from_the_git_tree() {
    let f = fixture();
    let render = rendered(f.repo.path());
    // An empty document and a List, as some pipelines concatenate them.
    let input = format!("---\n{render}---\n---\n{LIST_DOC}");
    let out = stamp(f.repo.path(), None, &[], &input);
    assert_eq!(out.code, 0, "stamp failed:\n{}", out.stderr);

    let expected_sum = checksum(&f.repo, "HEAD");
    let before = docs(&input);
    let mut after = docs(&out.stdout);
    assert_eq!(
        after.len(),
        before.len(),
        "empty documents are skipped, none other"
    );
    let idents: Vec<_> = objects(&before).iter().map(ident).collect();
    assert_eq!(
        objects(&after).iter().map(ident).collect::<Vec<_>>(),
        idents,
        "document order is kept"
    );
    assert!(idents.len() >= 6, "{idents:?}");
    for o in objects(&after) {
        assert_eq!(
            annotation(&o, REV_KEY),
            Some(f.head.as_str()),
            "{}",
            ident(&o)
        );
        assert_eq!(
            annotation(&o, SUM_KEY),
            Some(expected_sum.as_str()),
            "{}",
            ident(&o)
        );
    }
    // The List is annotated per item, not as a whole.
    let list = after.last().unwrap();
    assert_eq!(list["kind"].as_str(), Some("List"));
    assert!(
        list.get("metadata").is_none(),
        "the List itself is not annotated"
    );
    assert_eq!(
        annotation(&list["items"][1], "keep"),
        Some("me"),
        "existing annotations are kept"
    );
    // Nothing else changed, key order included.
    for (a, b) in after.iter_mut().zip(&before) {
        strip(a);
        assert_eq!(a, b);
        assert_eq!(
            serde_yaml_ng::to_string(a).unwrap(),
            serde_yaml_ng::to_string(b).unwrap()
        );
    }
    assert!(out.stderr.contains(&f.head), "{}", out.stderr);

    // Custom keys.
    let out = stamp(
        f.repo.path(),
        Some("main"),
        &[
            "--revision-key",
            "example.com/rev",
            "--checksum-key",
            "fluxcd.io/checksum",
        ],
        &render,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for o in objects(&docs(&out.stdout)) {
        assert_eq!(annotation(&o, "example.com/rev"), Some(f.head.as_str()));
        assert_eq!(
            annotation(&o, "fluxcd.io/checksum"),
            Some(expected_sum.as_str())
        );
        assert_eq!(annotation(&o, REV_KEY), None);
    }
}

#[test]
fn stamp_at_an_older_revision_uses_that_commit() {
    let f = fixture();
    let out = stamp(
        f.repo.path(),
        Some("HEAD~3"),
        &["--allow-dirty"],
        &rendered(f.repo.path()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let old_sum = checksum(&f.repo, &f.old);
    assert_ne!(old_sum, checksum(&f.repo, &f.head));
    for o in objects(&docs(&out.stdout)) {
        assert_eq!(annotation(&o, REV_KEY), Some(f.old.as_str()));
        assert_eq!(annotation(&o, SUM_KEY), Some(old_sum.as_str()));
    }
    // Without --allow-dirty the working tree (at head) does not match HEAD~3
    // under the overlay: the base's deployment differs.
    let out = stamp(
        f.repo.path(),
        Some("HEAD~3"),
        &[],
        "kind: A\nmetadata: {name: a}\n",
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("bases/web/deployment.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn dirty_tree_is_refused_unless_allowed_and_never_changes_the_checksum() {
    let f = fixture();
    let clean_sum = checksum(&f.repo, "HEAD");
    // Outside the closure: not dirty.
    f.repo.append("README.md", "local note\n");
    f.repo
        .write("overlays/prod/west/kustomization.yaml", "resources: []\n");
    let out = stamp(f.repo.path(), None, &[], &rendered(f.repo.path()));
    assert_eq!(
        out.code, 0,
        "edits outside the closure are not dirty:\n{}",
        out.stderr
    );

    // Inside the closure, reached through the symlinked base.
    f.repo.append("bases/web/service.yaml", "# local edit\n");
    f.repo.write(
        "overlays/prod/east/ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: changed}\n",
    );
    let input = rendered(f.repo.path());
    let out = stamp(f.repo.path(), None, &[], &input);
    assert_eq!(out.code, 1, "a dirty tree must be refused:\n{}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing written on refusal");
    for file in ["bases/web/service.yaml", "overlays/prod/east/ingress.yaml"] {
        assert!(out.stderr.contains(file), "names {file}:\n{}", out.stderr);
    }
    assert!(out.stderr.contains("--allow-dirty"), "{}", out.stderr);

    let out = stamp(f.repo.path(), None, &["--allow-dirty"], &input);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("warning"), "{}", out.stderr);
    for o in objects(&docs(&out.stdout)) {
        assert_eq!(
            annotation(&o, SUM_KEY),
            Some(clean_sum.as_str()),
            "from the git tree"
        );
        assert_eq!(annotation(&o, REV_KEY), Some(f.head.as_str()));
    }

    // A deleted symlink in the closure is dirty too.
    f.repo.remove("overlays/prod/east/base");
    let out = stamp(f.repo.path(), None, &[], "kind: A\nmetadata: {name: a}\n");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("overlays/prod/east/base"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_input_and_usage_exit_2() {
    let f = fixture();
    let out = stamp(
        f.repo.path(),
        None,
        &[],
        "kind: A\nmetadata: {name: a}\n---\nkind: [\n",
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("document 2"), "{}", out.stderr);
    let out = stamp(f.repo.path(), None, &[], "kind: A\n---\n- just a list\n");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("document 2"), "{}", out.stderr);
    let out = stamp(f.repo.path(), Some("no-such-rev"), &[], "kind: A\n");
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = stamp(
        f.repo.path(),
        None,
        &["--checksum-key", "bad key"],
        "kind: A\n",
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = stamp(f.repo.path(), None, &[], "---\n");
    assert_eq!(
        out.code, 2,
        "empty input (a failed render) is refused:\n{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    let out = verify(f.repo.path(), "kind: [\n");
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = verify(f.repo.path(), "");
    assert_eq!(out.code, 1, "no objects is a failed check:\n{}", out.stderr);
}

// ---------------------------------------------------------------------------
// stamp, then the webhook
// ---------------------------------------------------------------------------

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

struct Webhook {
    running: stale_guard::server::Running,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start_webhook(repo: &Path) -> Webhook {
    let dir = tempfile::Builder::new()
        .prefix("sg-stamp-")
        .tempdir()
        .unwrap();
    let bundle = stale_guard::certs::generate("ca", &["localhost".into(), "127.0.0.1".into()])
        .expect("certificates");
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, &bundle.cert_pem).unwrap();
    std::fs::write(&key, &bundle.key_pem).unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\n\
         tls: {{ certFile: {}, keyFile: {} }}\n\
         mirrorDir: {}\n\
         sources:\n  - {{ name: gitops, url: {}, branch: main, pollInterval: 1h }}\n\
         rules:\n  - name: prod-east\n    match: {{ namespaces: [{NAMESPACE}] }}\n    source: gitops\n    overlay: {OVERLAY}\n    mode: enforce\n    staleness: strict\n\
         failure: {{ mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 4s }}\n",
        q(cert.to_str().unwrap()),
        q(key.to_str().unwrap()),
        q(dir.path().join("mirror").to_str().unwrap()),
        q(repo.to_str().unwrap()),
    );
    let config = stale_guard::config::Config::parse(&yaml)
        .unwrap_or_else(|e| panic!("config refused: {e}\n{yaml}"));
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        stale_guard::server::start(config, Default::default()),
    )
    .await
    .expect("server::start within 60 s")
    .expect("server::start");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes()).unwrap())
        .https_only(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = format!("https://{}", running.local_addr);
    // Ready once the mirror has synced.
    let start = Instant::now();
    loop {
        let status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == 200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "webhook not ready within 30 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Webhook {
        running,
        base,
        client,
        _dir: dir,
    }
}

impl Webhook {
    /// POSTs one object as an AdmissionReview CREATE; returns the response.
    async fn review(&self, object: &Value, uid: &str) -> Json {
        let object: Json = serde_json::to_value(object).unwrap();
        let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (
                String::new(),
                object["apiVersion"].as_str().unwrap().to_owned(),
            ),
        };
        let kind = object["kind"].as_str().unwrap().to_owned();
        let resource = format!("{}s", kind.to_lowercase());
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "name": object["metadata"]["name"],
                "namespace": object["metadata"]["namespace"],
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:argocd:argocd-application-controller"},
                "object": object,
            }
        });
        let resp = self
            .client
            .post(format!("{}/validate", self.base))
            .json(&body)
            .send()
            .await
            .expect("POST /validate");
        assert_eq!(resp.status().as_u16(), 200);
        let review: Json = resp.json().await.expect("JSON AdmissionReview");
        let response = review["response"].clone();
        assert_eq!(response["uid"].as_str(), Some(uid));
        response
    }

    async fn stop(self) {
        self.running.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.running.task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamped_manifests_pass_the_webhook_at_head_and_are_stale_after() {
    let f = fixture();
    assert_ne!(f.changed, f.head);

    // At head, rendered and stamped from the repository itself.
    let at_head = stamp(f.repo.path(), None, &[], &rendered(f.repo.path()));
    assert_eq!(at_head.code, 0, "{}", at_head.stderr);

    // At the old revision, from another clone checked out there (what a CI
    // job or an Argo CD plugin does), before the commit that changed the base.
    let clone = f.repo.clone_no_local();
    clone.git(&["checkout", "-q", &f.old]);
    let at_old = stamp(clone.path(), None, &[], &rendered(clone.path()));
    assert_eq!(at_old.code, 0, "{}", at_old.stderr);

    let webhook = start_webhook(f.repo.path()).await;
    let fresh = objects(&docs(&at_head.stdout));
    let stale = objects(&docs(&at_old.stdout));
    assert!(!fresh.is_empty() && fresh.len() == stale.len());
    for (i, o) in fresh.iter().enumerate() {
        assert_eq!(o["metadata"]["namespace"].as_str(), Some(NAMESPACE));
        let r = webhook.review(o, &format!("fresh-{i}")).await;
        assert_eq!(r["allowed"], json!(true), "{}: {r}", ident(o));
        assert_eq!(
            r["auditAnnotations"]["reason"],
            json!("Fresh"),
            "{}: {r}",
            ident(o)
        );
    }
    for (i, o) in stale.iter().enumerate() {
        let r = webhook.review(o, &format!("stale-{i}")).await;
        assert_eq!(r["allowed"], json!(false), "{}: {r}", ident(o));
        assert_eq!(
            r["auditAnnotations"]["reason"],
            json!("StaleRevision"),
            "{}: {r}",
            ident(o)
        );
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("StaleRevision"),
            "{r}"
        );
    }
    // A tampered checksum on a head-stamped object.
    let mut tampered = fresh[0].clone();
    tampered["metadata"]["annotations"][SUM_KEY] = Value::from(checksum(&f.repo, &f.old));
    let r = webhook.review(&tampered, "tampered").await;
    assert_eq!(
        r["auditAnnotations"]["reason"],
        json!("ChecksumMismatch"),
        "{r}"
    );
    webhook.stop().await;

    // verify agrees with the webhook.
    let v = verify(f.repo.path(), &at_head.stdout);
    assert_eq!(v.code, 0, "verify at head:\n{}\n{}", v.stdout, v.stderr);
    assert_eq!(
        v.stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        fresh.len()
    );
    let v = verify(f.repo.path(), &at_old.stdout);
    assert_eq!(v.code, 1, "verify of stale manifests:\n{}", v.stdout);
    assert_eq!(
        v.stdout.matches(": StaleRevision:").count(),
        stale.len(),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains(&format!("Deployment/{NAMESPACE}/web")),
        "{}",
        v.stdout
    );
    let tampered_doc = serde_yaml_ng::to_string(&tampered).unwrap();
    let v = verify(f.repo.path(), &tampered_doc);
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains("ChecksumMismatch"), "{}", v.stdout);

    // verify reads a file too, and accepts the other revision forms.
    let file = f.repo.scratch().join("rendered.yaml");
    let flux_form = at_head
        .stdout
        .replace(&format!("'{}'", f.head), &f.head)
        .replace(
            &format!("{REV_KEY}: {}", f.head),
            &format!("{REV_KEY}: main@sha1:{}", f.head.to_uppercase()),
        );
    assert_eq!(flux_form.matches("main@sha1:").count(), fresh.len());
    std::fs::write(&file, &flux_form).unwrap();
    let repo = f.repo.path().to_str().unwrap();
    let v = run(
        &[
            "verify",
            "--repo",
            repo,
            "--overlay",
            OVERLAY,
            file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
}

/// `verify --content`: the CI side of content verification. Objects are
/// compared with the overlay's rendering at head by the webhook's
/// comparison, annotations ignored.
#[test]
fn verify_content_compares_objects_with_the_rendering() {
    let fx = fixture();
    let repo = fx.repo.path().to_str().unwrap().to_owned();
    let verify_content = |input: &str| {
        run(
            &[
                "verify",
                "--content",
                "--render-command",
                "kubectl kustomize",
                "--repo",
                &repo,
                "--overlay",
                OVERLAY,
                "-",
            ],
            input,
        )
    };
    let at_head = rendered(fx.repo.path());
    let o = verify_content(&at_head);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);

    // The image of the commit before: the differing field and both values.
    let stale = at_head.replace("nginx:1.27.3", "nginx:1.27.0");
    assert_ne!(stale, at_head);
    let o = verify_content(&stale);
    let said = format!("{}{}", o.stdout, o.stderr);
    assert_eq!(o.code, 1, "{said}");
    assert!(said.contains("ContentMismatch"), "{said}");
    assert!(
        said.contains("spec.template.spec.containers[0].image"),
        "{said}"
    );
    assert!(
        said.contains("nginx:1.27.0") && said.contains("nginx:1.27.3"),
        "{said}"
    );

    // An object the overlay does not render.
    let o = verify_content(&at_head.replace("name: web-config", "name: other-config"));
    let said = format!("{}{}", o.stdout, o.stderr);
    assert_eq!(o.code, 1, "{said}");
    assert!(said.contains("NotRendered"), "{said}");
}
