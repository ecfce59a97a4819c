//! The AdmissionReview path, body bytes to response:
//! `admission::parse_review` → `out_of_scope` → `matching_rule` →
//! `request_facts` → mirror facts and overlay checksums → `policy::decide`
//! (and `policy::timed_out`) → `admission::response`, serialised.
//!
//! The facts come from a real in-process [`Mirror`] of a small fixture
//! repository (built once with the git CLI, then cloned by `Mirror::open`)
//! and real checksums from a [`ChecksumEngine`] over the mirror, gathered
//! as `src/server.rs` gathers them, except that no fetch is made for an
//! unknown revision (the fuzzer would spend its time in `git fetch`) and
//! the time since the head moved is fixed (so a verdict does not depend on
//! when the input ran).
//!
//! Every body is decided under 12 configurations (mode × staleness ×
//! failure action), each with three rules (by namespace: `prod-apps` a
//! plain overlay, `linked` an overlay through a symlink, `broken` an
//! overlay with a missing resource).
//!
//! `STALE_GUARD_FUZZ_WRITE_SEEDS=<dir>` writes seed reviews stamped with the
//! fixture's real revisions and checksums into `<dir>` (how
//! `fuzz/corpus/review/` was made).
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gix::ObjectId;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use stale_guard::admission;
use stale_guard::checksum::{Caches, ChecksumEngine};
use stale_guard::config::Config;
use stale_guard::mirror::{Mirror, SourceSpec};
use stale_guard::policy::{
    self, Annotation, ChecksumFact, Decision, FailureAction, HeadFacts, MirrorFacts, Mode,
    Position, Reason, Revision, RulePolicy,
};
use stale_guard_fuzz::{git, git_at, scratch_dir};

/// How long ago the mirror saw its head move (inside the 2m grace period).
const SINCE_HEAD_MOVED: Duration = Duration::from_secs(30);

struct Fixture {
    configs: Vec<(Config, Vec<RulePolicy>)>,
    mirror: Arc<Mirror>,
    caches: Arc<Caches>,
    _runtime: tokio::runtime::Runtime,
}

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// The origin: c1 (base, three overlays) ← c2 (README only) ← c3 (the base
/// ConfigMap changes) ← c4 (README only, seen by the mirror as a move).
fn build_origin(root: &Path) -> Vec<String> {
    std::fs::create_dir_all(root).unwrap();
    git(root, &["init", "-q", "-b", "main"]);
    write(
        root,
        "base/kustomization.yaml",
        "resources: [cm.yaml, ingress.yaml]\nconfigMapGenerator:\n  - name: g\n    files: [app.properties]\n",
    );
    write(
        root,
        "base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {v: \"1\"}\n",
    );
    write(
        root,
        "base/ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n",
    );
    write(root, "base/app.properties", "replicas=3\n");
    write(
        root,
        "overlays/prod/kustomization.yaml",
        "resources: [../../base]\nnamespace: prod-apps\n",
    );
    write(
        root,
        "overlays/linked/kustomization.yaml",
        "resources: [../../bases/linked]\n",
    );
    std::fs::create_dir_all(root.join("bases")).unwrap();
    std::os::unix::fs::symlink("../base", root.join("bases/linked")).unwrap();
    write(
        root,
        "overlays/broken/kustomization.yaml",
        "resources: [../../base, missing.yaml]\n",
    );
    write(root, "README.md", "fixture\n");
    let mut commits = Vec::new();
    let mut commit = |n: i64, msg: &str| {
        git_at(root, 1_700_000_000 + n * 60, &["add", "-A"]);
        git_at(root, 1_700_000_000 + n * 60, &["commit", "-q", "-m", msg]);
        commits.push(git(root, &["rev-parse", "HEAD"]));
    };
    commit(1, "c1");
    write(root, "README.md", "fixture, again\n");
    commit(2, "c2");
    write(
        root,
        "base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {v: \"2\"}\n",
    );
    commit(3, "c3");
    commits
}

fn config_yaml(mode: &str, staleness: &str, failure: &str) -> String {
    let rule = |name: &str, ns: &str, overlay: &str| {
        format!(
            "  - name: {name}\n    match: {{ namespaces: [{ns}] }}\n    source: gitops\n    overlay: {overlay}\n    mode: {mode}\n    staleness: {staleness}\n    gracePeriod: 2m\n"
        )
    };
    format!(
        "tls: {{ certFile: tls/tls.crt, keyFile: tls/tls.key }}\n\
         mirrorDir: mirror\n\
         sources:\n  - {{ name: gitops, url: \"https://git.example.com/gitops.git\", branch: main }}\n\
         rules:\n{}{}{}\
         breakGlass: {{ users: [alice], groups: [\"sre:break-glass\"] }}\n\
         failure: {{ mirrorUnavailable: {failure}, decisionTimeoutAction: {failure} }}\n",
        rule("prod", "prod-apps", "overlays/prod"),
        rule("linked", "linked", "overlays/linked"),
        rule("broken", "broken", "overlays/broken"),
    )
}

/// What the server makes of a config rule (src/server.rs `rule_policy`).
fn rule_policies(config: &Config) -> Vec<RulePolicy> {
    config
        .rules
        .iter()
        .map(|r| RulePolicy {
            name: r.name.clone(),
            branch: config.sources[0].branch.clone(),
            mode: r.mode,
            staleness: r.staleness,
            grace_period: config.grace_period(r),
        })
        .collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let scratch = scratch_dir("review");
        let origin = scratch.join("origin");
        let mut commits = build_origin(&origin);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut spec = SourceSpec::new("gitops", origin.to_str().unwrap(), "main");
        spec.poll_interval = Duration::from_secs(3600);
        let mirror = runtime
            .block_on(Mirror::open(spec, &scratch.join("mirrors")))
            .expect("open the mirror");
        // Move the head once, so the mirror has a previous head (grace).
        write(&origin, "README.md", "fixture, a third time\n");
        git_at(&origin, 1_700_000_240, &["commit", "-qam", "c4"]);
        commits.push(git(&origin, &["rev-parse", "HEAD"]));
        runtime
            .block_on(mirror.refresh())
            .expect("refresh the mirror");
        let head = mirror.head().expect("the mirror synced");
        assert_eq!(head.commit.to_string(), commits[3]);
        let configs = ["enforce", "warn", "audit"]
            .iter()
            .flat_map(|m| ["strict", "content"].map(move |s| (*m, s)))
            .flat_map(|(m, s)| ["deny", "allow"].map(move |f| (m, s, f)))
            .map(|(m, s, f)| {
                let config = Config::parse(&config_yaml(m, s, f)).expect("config");
                let policies = rule_policies(&config);
                (config, policies)
            })
            .collect();
        let fixture = Fixture {
            configs,
            caches: Arc::new(Caches::default()),
            mirror,
            _runtime: runtime,
        };
        if let Some(dir) = std::env::var_os("STALE_GUARD_FUZZ_WRITE_SEEDS") {
            write_seeds(&fixture, Path::new(&dir), &commits);
        }
        fixture
    })
}

fn oid_bytes(oid: ObjectId) -> [u8; 20] {
    oid.as_bytes().try_into().expect("a SHA-1 object id")
}

fn checksum(fx: &Fixture, commit: ObjectId, overlay: &str) -> ChecksumFact {
    let engine = ChecksumEngine::with_caches(fx.mirror.repository(), fx.caches.clone());
    engine
        .checksum(commit, overlay)
        .map(|sum| sum.checksum)
        .map_err(|e| e.to_string())
}

/// `AppState::gather` (src/server.rs) without the on-demand fetch and with
/// a fixed time since the head moved.
fn gather(fx: &Fixture, rule: &RulePolicy, overlay: &str, revision: Revision) -> MirrorFacts {
    let oid = ObjectId::Sha1(revision.0);
    let facts = fx.mirror.facts(oid);
    let Some(head) = fx.mirror.head() else {
        return MirrorFacts::Unavailable {
            why: "the mirror has never synced".into(),
        };
    };
    let head_facts = HeadFacts {
        commit: Revision(oid_bytes(head.commit)),
        commit_time: head.commit_time,
        previous: head
            .previous
            .map(|p| (Revision(oid_bytes(p)), SINCE_HEAD_MOVED)),
    };
    let position = Position::of(&facts);
    let (need_revision, need_head) =
        policy::needed_checksums(rule, revision, &head_facts, position);
    MirrorFacts::Available {
        head: head_facts,
        position,
        at_revision: need_revision.then(|| checksum(fx, oid, overlay)),
        at_head: need_head.then(|| checksum(fx, head.commit, overlay)),
    }
}

/// The verdict as `AppState::decide` reaches it.
fn decide(
    fx: &Fixture,
    config: &Config,
    policies: &[RulePolicy],
    req: &admission::Request,
) -> Decision {
    if let Some(why) = admission::out_of_scope(req) {
        return Decision::out_of_scope(why);
    }
    let Some((index, rule)) = admission::matching_rule(config, req) else {
        return Decision::out_of_scope("no rule matches this request");
    };
    let rule_policy = &policies[index];
    let facts = admission::request_facts(config, req);
    let failure = config.failure.mirror_unavailable;
    let (Some(revision), Annotation::Valid(_)) =
        (admission::valid_revision(&facts), &facts.checksum)
    else {
        let unused = MirrorFacts::Unavailable { why: String::new() };
        return policy::decide(rule_policy, &facts, &unused, failure);
    };
    let mirror_facts = gather(fx, rule_policy, &rule.overlay, revision);
    policy::decide(rule_policy, &facts, &mirror_facts, failure)
}

/// The decision table's invariants (as tests/fuzz_properties.rs checks them).
fn check_decision(
    rule: &RulePolicy,
    request: &policy::RequestFacts,
    d: &Decision,
    failure: FailureAction,
) {
    assert!(
        d.message.starts_with(&format!("{}: ", d.reason.as_str())),
        "message {:?} does not start with its reason {:?}",
        d.message,
        d.reason
    );
    assert_eq!(d.mode, Some(rule.mode));
    assert_eq!(d.rule.as_deref(), Some(rule.name.as_str()));
    let table_reason = d.overridden.unwrap_or(d.reason);
    if d.overridden.is_some() {
        assert_eq!(d.reason, Reason::BreakGlass);
        assert!(request.break_glass && !table_reason.allows());
    }
    let infrastructure = matches!(
        table_reason,
        Reason::MirrorUnavailable | Reason::DecisionTimeout
    );
    let softened = infrastructure && failure == FailureAction::Allow;
    let must_deny =
        !table_reason.allows() && rule.mode == Mode::Enforce && !request.break_glass && !softened;
    assert_eq!(
        d.allowed, !must_deny,
        "{table_reason:?} {:?} {}",
        rule.mode, request.break_glass
    );
    assert_eq!(d.is_denial(), !table_reason.allows());
    if let (Some(r), Annotation::Valid(want)) = (d.revision, &request.revision) {
        assert_eq!(r, *want);
    }
}

fn check_response(req: &admission::Request, d: &Decision) {
    let review = admission::response(req, d);
    let text = serde_json::to_vec(&review).expect("the response serialises");
    let v: Value = serde_json::from_slice(&text).expect("the response is JSON");
    let resp = &v["response"];
    assert_eq!(resp["uid"], json!(req.uid));
    assert_eq!(resp["allowed"], json!(d.allowed));
    assert_eq!(v["apiVersion"], json!(admission::API_VERSION));
    assert_eq!(resp["auditAnnotations"]["reason"], json!(d.reason.as_str()));
    if !d.allowed {
        assert_eq!(resp["status"]["message"], json!(d.message));
        assert_eq!(resp["status"]["code"], json!(403));
    }
}

fn run(fx: &Fixture, body: &[u8]) -> Vec<Decision> {
    let req = match admission::parse_review(body) {
        Ok(req) => req,
        Err(e) => {
            assert!(!e.0.is_empty());
            return Vec::new();
        }
    };
    assert!(!req.uid.is_empty());
    let mut out = Vec::new();
    for (config, policies) in &fx.configs {
        let d = decide(fx, config, policies, &req);
        check_response(&req, &d);
        if d.reason != Reason::OutOfScope {
            let (index, _) = admission::matching_rule(config, &req).expect("a rule matched");
            let rule = &policies[index];
            let facts = admission::request_facts(config, &req);
            check_decision(rule, &facts, &d, config.failure.mirror_unavailable);
            let t = policy::timed_out(
                rule,
                &facts,
                config.failure.decision_timeout,
                config.failure.decision_timeout_action,
            );
            assert!(matches!(
                t.reason,
                Reason::DecisionTimeout | Reason::BreakGlass
            ));
            check_decision(rule, &facts, &t, config.failure.decision_timeout_action);
            check_response(&req, &t);
        }
        out.push(d);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    run(fx, data);
});

// ---------------------------------------------------------------------------
// seeds
// ---------------------------------------------------------------------------

fn review(namespace: &str, user: &str, annotations: &[(&str, &str)]) -> Value {
    let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
            "name": "web",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": user, "groups": ["system:serviceaccounts"]},
            "object": {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {"name": "web", "namespace": namespace, "annotations": ann},
                "spec": {"rules": [{"host": "web.example.com"}]}
            },
            "dryRun": false
        }
    })
}

fn write_seeds(fx: &Fixture, dir: &Path, commits: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    const REV: &str = "stale-guard.io/revision";
    const SUM: &str = "stale-guard.io/checksum";
    const FLUX: &str = "kustomize.toolkit.fluxcd.io/revision";
    let sa = "system:serviceaccount:flux-system:kustomize-controller";
    let mut seeds: Vec<(String, Value)> = Vec::new();
    for (ns, overlay) in [
        ("prod-apps", "overlays/prod"),
        ("linked", "overlays/linked"),
        ("broken", "overlays/broken"),
    ] {
        for (i, c) in commits.iter().enumerate() {
            let oid = ObjectId::from_hex(c.as_bytes()).unwrap();
            let sum = checksum(fx, oid, overlay)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| format!("sha256:{}", "0".repeat(64)));
            let flux = format!("main@sha1:{c}");
            seeds.push((
                format!("{ns}-c{}", i + 1),
                review(ns, sa, &[(REV, c), (SUM, &sum), (FLUX, &flux)]),
            ));
            if i == commits.len() - 1 {
                seeds.push((
                    format!("{ns}-head-flux-form"),
                    review(ns, sa, &[(REV, &flux), (SUM, &sum)]),
                ));
                seeds.push((
                    format!("{ns}-head-break-glass"),
                    review(
                        ns,
                        "alice",
                        &[(REV, c), (SUM, &format!("sha256:{}", "1".repeat(64)))],
                    ),
                ));
            }
        }
    }
    let head = commits.last().unwrap();
    let sum = format!("sha256:{}", "2".repeat(64));
    seeds.push((
        "mismatch".into(),
        review("prod-apps", sa, &[(REV, head), (SUM, &sum)]),
    ));
    seeds.push((
        "unknown-revision".into(),
        review("prod-apps", sa, &[(REV, &"ab".repeat(20)), (SUM, &sum)]),
    ));
    seeds.push(("missing".into(), review("prod-apps", sa, &[])));
    seeds.push((
        "near-miss".into(),
        review(
            "prod-apps",
            sa,
            &[("stale-guard.io/Revision", head), ("checksum", &sum)],
        ),
    ));
    seeds.push((
        "malformed".into(),
        review("prod-apps", sa, &[(REV, &head[..12]), (SUM, "sha256:XYZ")]),
    ));
    seeds.push(("no-rule".into(), review("kube-system", sa, &[])));
    let mut delete = review("prod-apps", sa, &[]);
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["object"] = Value::Null;
    seeds.push(("delete".into(), delete));
    let mut update = review("prod-apps", sa, &[(REV, head), (SUM, &sum)]);
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["subResource"] = json!("status");
    seeds.push(("update-status".into(), update));
    let mut v1beta1 = review("prod-apps", sa, &[]);
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    seeds.push(("v1beta1".into(), v1beta1));
    for (name, v) in seeds {
        let body = serde_json::to_vec(&v).unwrap();
        let verdicts: Vec<&str> = run(fx, &body).iter().map(|d| d.reason.as_str()).collect();
        eprintln!("seed {name}: {:?}", verdicts.first());
        std::fs::write(dir.join(format!("{name}.json")), body).unwrap();
    }
}
