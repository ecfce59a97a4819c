//! Integration tests of the admission webhook: the real server
//! (`server::start`) on an ephemeral loopback port with certificates made
//! here, against real git repositories (the support fixture: a nested
//! overlay whose base is reached through a symlink, plus a six-week
//! history), answering AdmissionReviews sent by an HTTPS client that trusts
//! only the test CA, over HTTP/1.1 and HTTP/2. One test per reason code
//! (contract section 3), the incident replay, mirror updates while serving,
//! bad input and the operational endpoints.
#![cfg(unix)]

mod support;
mod webhook_support;

use std::time::{Duration, Instant};

use webhook_support::*;

fn short(rev: &str) -> &str {
    &rev[..7]
}

/// Starts a server with the world's default configuration.
async fn serve(world: &World) -> Server {
    Server::start(&world.config()).await
}

// ---------------------------------------------------------------------------
// allows
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh() {
    let w = World::build();
    let srv = serve(&w).await;
    for proto in [Proto::H1, Proto::H2] {
        let client = srv.client(proto);
        let forms = [
            w.head.clone(),
            format!("sha1:{}", w.head),
            format!("main@sha1:{}", w.head.to_uppercase()),
        ];
        for form in forms {
            let review = Review::ingress("fresh", "prod-apps").stamped(&form, &w.head_sum);
            let v = post_review(&client, &srv.base, &review).await;
            v.assert_version(proto);
            v.assert_allowed("Fresh");
            assert!(
                v.message().is_empty() || v.message().starts_with("Fresh"),
                "{}",
                v.body
            );
            assert_eq!(v.audit("rule"), Some("prod-east"), "{}", v.body);
            assert_eq!(v.audit("revision"), Some(w.head.as_str()), "{}", v.body);
            assert_eq!(v.audit("head"), Some(w.head.as_str()), "{}", v.body);
            assert!(v.warnings().is_empty(), "{}", v.body);
            assert_no_warn_audit(&review.uid);
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_scope() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    // A stale, unstamped object: only the scope decides.
    let cases = [
        (
            "DELETE",
            Review::ingress("oos-delete", "prod-apps")
                .stamped(&w.old, &w.old_sum)
                .operation("DELETE"),
        ),
        (
            "subresource",
            Review::ingress("oos-sub", "prod-apps")
                .stamped(&w.old, &w.old_sum)
                .operation("UPDATE")
                .sub_resource("status"),
        ),
        (
            "no rule",
            Review::ingress("oos-norule", "kube-system").stamped(&w.old, &w.old_sum),
        ),
        ("no rule, unstamped", Review::ingress("oos-bare", "team-x")),
    ];
    for (what, review) in cases {
        let v = post_review(&client, &srv.base, &review).await;
        v.assert_allowed("OutOfScope");
        assert!(
            v.message().is_empty() || v.message().starts_with("OutOfScope"),
            "{what}: {}",
            v.body
        );
        assert!(
            v.audit("rule").is_none(),
            "{what}: no rule applies: {}",
            v.body
        );
        assert_no_warn_audit(&review.uid);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_overlay() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H1);
    // head~1 only differs from head in docs: the overlay is unchanged.
    let review = Review::ingress("unchanged", "content-apps").stamped(&w.prev, &w.head_sum);
    let v = post_review(&client, &srv.base, &review).await;
    v.assert_version(Proto::H1);
    v.assert_allowed("UnchangedOverlay");
    assert_eq!(v.audit("rule"), Some("content-east"));
    assert_eq!(v.audit("revision"), Some(w.prev.as_str()));
    assert_eq!(v.audit("head"), Some(w.head.as_str()));
    assert_no_warn_audit(&review.uid);

    // The same revision under the strict rule is stale.
    let strict = Review::ingress("unchanged-strict", "prod-apps").stamped(&w.prev, &w.head_sum);
    let v = post_review(&client, &srv.base, &strict).await;
    let msg = v.assert_denied("StaleRevision");
    assert!(msg.contains("1 commit "), "{msg}");

    // The old revision changed the overlay since: stale under content too.
    let old = Review::ingress("unchanged-old", "content-apps").stamped(&w.old, &w.old_sum);
    let v = post_review(&client, &srv.base, &old).await;
    let msg = v.assert_denied("StaleRevision");
    assert!(msg.contains(short(&w.old)), "{msg}");
    audit_line(&old.uid, "StaleRevision", false).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    let by_user = Review::ingress("bg-user", "prod-apps")
        .stamped(&w.old, &w.old_sum)
        .user("oncall@corp.example.com", &["system:authenticated"]);
    let by_group = Review::ingress("bg-group", "prod-apps")
        .annotate(REVISION_KEY, &w.head)
        .user(
            "jane@corp.example.com",
            &["sre-break-glass", "system:authenticated"],
        );
    for (review, overridden) in [(by_user, "StaleRevision"), (by_group, "MissingChecksum")] {
        let v = post_review(&client, &srv.base, &review).await;
        v.assert_version(Proto::H2);
        v.assert_allowed("BreakGlass");
        assert_eq!(v.audit("overridden"), Some(overridden), "{}", v.body);
        assert_eq!(v.audit("rule"), Some("prod-east"));
        // Logged as a denial that was overridden.
        let line = audit_line(&review.uid, "BreakGlass", true).await;
        assert_eq!(line["overridden"], overridden, "{line}");
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.starts_with("BreakGlass"), "{detail}");
        assert!(detail.contains(overridden), "{detail}");
        assert_eq!(line["user"], review.username, "{line}");
    }
    // Break-glass does not rescue a member of no break-glass group.
    let normal = Review::ingress("bg-none", "prod-apps")
        .stamped(&w.old, &w.old_sum)
        .user("jane@corp.example.com", &["system:authenticated"]);
    post_review(&client, &srv.base, &normal)
        .await
        .assert_denied("StaleRevision");
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// annotation problems
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_revision() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H1);
    let absent = Review::ingress("mrev", "prod-apps").annotate(CHECKSUM_KEY, &w.head_sum);
    let empty = Review::ingress("mrev-empty", "prod-apps").stamped("", &w.head_sum);
    for review in [absent, empty] {
        let v = post_review(&client, &srv.base, &review).await;
        let msg = v.assert_denied("MissingRevision");
        assert!(msg.contains("revision annotation"), "{msg}");
        assert!(msg.contains("stamp"), "says what to do: {msg}");
        assert_eq!(v.audit("rule"), Some("prod-east"));
        assert!(v.audit("revision").is_none(), "{}", v.body);
        let line = audit_line(&review.uid, "MissingRevision", false).await;
        assert_eq!(line["rule"], "prod-east");
        assert_eq!(line["name"], "web");
        assert_eq!(line["namespace"], "prod-apps");
        assert_eq!(line["operation"], "CREATE");
        assert_eq!(line["found_checksum"], "", "{line}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_revision() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    let abbreviated = short(&w.head).to_string();
    for value in [
        abbreviated.clone(),
        format!("main@{abbreviated}"),
        format!("sha256:{}", w.head),
        format!("{}0", w.head),
    ] {
        let review = Review::ingress("malrev", "prod-apps").stamped(&value, &w.head_sum);
        let v = post_review(&client, &srv.base, &review).await;
        let msg = v.assert_denied("MalformedRevision");
        assert!(
            msg.contains(&format!("{value:?}")),
            "names the value: {msg}"
        );
        assert!(msg.contains("40 hex"), "says what is expected: {msg}");
        let line = audit_line(&review.uid, "MalformedRevision", false).await;
        assert_eq!(line["revision"], "", "{line}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_checksum() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H1);
    let absent = Review::ingress("msum", "prod-apps").annotate(REVISION_KEY, &w.head);
    let v = post_review(&client, &srv.base, &absent).await;
    let msg = v.assert_denied("MissingChecksum");
    assert!(msg.contains("checksum annotation"), "{msg}");
    assert!(!msg.contains("near-miss"), "no near miss here: {msg}");
    assert_eq!(v.audit("revision"), Some(w.head.as_str()));
    let line = audit_line(&absent.uid, "MissingChecksum", false).await;
    assert_eq!(line["revision"], w.head.as_str());

    // A near miss (another case) is named.
    let near = Review::ingress("msum-near", "prod-apps")
        .annotate(REVISION_KEY, &w.head)
        .annotate("Stale-Guard.io/Checksum", &w.head_sum);
    let v = post_review(&client, &srv.base, &near).await;
    let msg = v.assert_denied("MissingChecksum");
    assert!(msg.contains("\"Stale-Guard.io/Checksum\""), "{msg}");
    audit_line(&near.uid, "MissingChecksum", false).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_checksum() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    let hex = w.head_sum.strip_prefix("sha256:").unwrap();
    for value in [
        format!("sha256:{}", hex.to_uppercase()),
        hex.to_string(),
        format!("sha256:{}", &hex[..63]),
        format!("sha1:{}", w.head),
        format!(" {}", w.head_sum),
    ] {
        let review = Review::ingress("malsum", "prod-apps").stamped(&w.head, &value);
        let v = post_review(&client, &srv.base, &review).await;
        let msg = v.assert_denied("MalformedChecksum");
        assert!(
            msg.contains(&format!("{value:?}")),
            "names the value {value:?}: {msg}"
        );
        assert!(msg.contains("sha256:"), "says what is expected: {msg}");
        assert_eq!(v.audit("revision"), Some(w.head.as_str()));
        audit_line(&review.uid, "MalformedChecksum", false).await;
    }
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// revision problems
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_revision() {
    let w = World::build();
    let srv = serve(&w).await;
    let behind = w.behind(&w.old, &w.head);
    let days = w.days_between(&w.old, &w.head);
    assert_eq!(days, 42, "fixture: six weeks of history");
    for proto in [Proto::H1, Proto::H2] {
        let client = srv.client(proto);
        let review = Review::ingress("stale", "prod-apps").stamped(&w.old, &w.old_sum);
        let v = post_review(&client, &srv.base, &review).await;
        v.assert_version(proto);
        let msg = v.assert_denied("StaleRevision");
        let want = format!(
            "{} is {behind} commits and {days} days behind main@{}",
            short(&w.old),
            short(&w.head)
        );
        assert!(msg.contains(&want), "expected {want:?} in {msg:?}");
        assert!(msg.contains("re-render"), "says what to do: {msg}");
        assert_eq!(v.audit("rule"), Some("prod-east"));
        assert_eq!(v.audit("revision"), Some(w.old.as_str()));
        assert_eq!(v.audit("head"), Some(w.head.as_str()));
        let line = audit_line(&review.uid, "StaleRevision", false).await;
        assert_eq!(line["revision"], w.old.as_str(), "{line}");
        assert_eq!(line["head"], w.head.as_str(), "{line}");
        assert_eq!(line["found_checksum"], w.old_sum.as_str(), "{line}");
        assert_eq!(line["detail"], msg, "{line}");
        assert_eq!(line["user"], FLUX_USER, "{line}");
    }
    // The previous head is stale too (strict, no grace period).
    let review = Review::ingress("stale-prev", "prod-apps").stamped(&w.prev, &w.head_sum);
    let v = post_review(&srv.client(Proto::H2), &srv.base, &review).await;
    let msg = v.assert_denied("StaleRevision");
    assert!(msg.contains("is 1 commit and"), "{msg}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_revision() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H1);
    let unknown = "0badc0ffee0ddf00d15ea5e0000000000000beef";
    let review = Review::ingress("unknown", "prod-apps").stamped(unknown, &w.head_sum);
    let started = Instant::now();
    let v = post_review(&client, &srv.base, &review).await;
    let msg = v.assert_denied("UnknownRevision");
    assert!(msg.contains("0badc0f"), "short sha: {msg}");
    assert!(
        msg.contains("on demand within limits.onDemandFetches"),
        "says fetches are bounded: {msg}"
    );
    assert!(
        msg.contains(&format!("main@{}", short(&w.head))),
        "names the head: {msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an on-demand fetch from a local origin is quick: {:?}",
        started.elapsed()
    );
    assert_eq!(v.audit("revision"), Some(unknown));
    assert_eq!(v.audit("head"), Some(w.head.as_str()));
    let line = audit_line(&review.uid, "UnknownRevision", false).await;
    assert_eq!(line["revision"], unknown);
    // Asked again: same answer.
    let again = Review::ingress("unknown-again", "prod-apps").stamped(unknown, &w.head_sum);
    post_review(&client, &srv.base, &again)
        .await
        .assert_denied("UnknownRevision");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_not_on_branch() {
    let w = World::build();
    // A developer pushes a commit on another branch to the origin.
    let dev = w.repo().clone_no_local();
    dev.git(&["checkout", "-q", "-b", "feature/bigger-body"]);
    dev.write(
        "bases/prod-east/patches/ingress-host.yaml",
        String::from_utf8(dev.read("bases/prod-east/patches/ingress-host.yaml"))
            .unwrap()
            .replace("proxy-body-size: ", "proxy-body-size: 1"),
    );
    let feature = dev.commit("feature: bigger bodies");
    dev.git(&["push", "-q", "origin", "feature/bigger-body"]);
    assert_eq!(w.repo().rev_parse("feature/bigger-body"), feature);
    let feature_sum = checksum_at(dev.path(), &feature, EAST);

    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    let review = Review::ingress("offbranch", "prod-apps").stamped(&feature, &feature_sum);
    let v = post_review(&client, &srv.base, &review).await;
    let msg = v.assert_denied("RevisionNotOnBranch");
    assert!(msg.contains(short(&feature)), "{msg}");
    assert!(msg.contains("not on main"), "{msg}");
    assert!(msg.contains(&format!("main@{}", short(&w.head))), "{msg}");
    assert_eq!(v.audit("revision"), Some(feature.as_str()));
    assert_eq!(v.audit("head"), Some(w.head.as_str()));
    let line = audit_line(&review.uid, "RevisionNotOnBranch", false).await;
    assert_eq!(line["revision"], feature.as_str());
    srv.stop().await;
}

/// Flux's `<branch>@sha1:<hex>` names the branch the manifests were
/// rendered from: a revision that names another branch is refused even
/// when the commit is the head of the rule's branch, with both names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_naming_another_branch_is_refused() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    for claimed in ["feature/bigger-body", "release", "mainline"] {
        let value = format!("{claimed}@sha1:{}", w.head);
        let review = Review::ingress("otherbranch", "prod-apps").stamped(&value, &w.head_sum);
        let v = post_review(&client, &srv.base, &review).await;
        let msg = v.assert_denied("RevisionNotOnBranch");
        assert!(
            msg.contains(&format!("{claimed:?}")) && msg.contains("\"main\""),
            "names both branches: {msg}"
        );
        assert!(msg.contains(short(&w.head)), "{msg}");
        assert_eq!(v.audit("revision"), Some(w.head.as_str()));
        audit_line(&review.uid, "RevisionNotOnBranch", false).await;
    }
    // The rule's branch, by its short name or its full ref, passes.
    for value in [
        format!("main@sha1:{}", w.head),
        format!("refs/heads/main@sha1:{}", w.head),
    ] {
        let review = Review::ingress("samebranch", "prod-apps").stamped(&value, &w.head_sum);
        post_review(&client, &srv.base, &review)
            .await
            .assert_allowed("Fresh");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H1);
    // Head revision, but the checksum of another overlay (or of the old one).
    for (tag, wrong) in [("mm-west", &w.west_sum), ("mm-old", &w.old_sum)] {
        let review = Review::ingress(tag, "prod-apps").stamped(&w.head, wrong);
        let v = post_review(&client, &srv.base, &review).await;
        let msg = v.assert_denied("ChecksumMismatch");
        assert!(msg.contains(wrong.as_str()), "found checksum shown: {msg}");
        assert!(msg.contains(&w.head_sum), "expected checksum shown: {msg}");
        assert!(msg.contains(short(&w.head)), "{msg}");
        assert_eq!(v.audit("revision"), Some(w.head.as_str()));
        assert_eq!(v.audit("head"), Some(w.head.as_str()));
        let line = audit_line(&review.uid, "ChecksumMismatch", false).await;
        assert_eq!(line["expected_checksum"], w.head_sum.as_str(), "{line}");
        assert_eq!(line["found_checksum"], wrong.as_str(), "{line}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_error() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    // overlays/prod/broken names a base that does not exist.
    let review = Review::ingress("ovl", "broken-apps").stamped(&w.head, &w.head_sum);
    let v = post_review(&client, &srv.base, &review).await;
    let msg = v.assert_denied("OverlayError");
    assert!(msg.contains("prod-gone"), "names the missing path: {msg}");
    assert!(msg.contains(short(&w.head)), "{msg}");
    assert_eq!(v.audit("rule"), Some("broken"));
    assert_eq!(v.audit("revision"), Some(w.head.as_str()));
    let line = audit_line(&review.uid, "OverlayError", false).await;
    assert_eq!(line["rule"], "broken");
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// infrastructure failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_unavailable() {
    let w = World::build();
    let mut config = w.config();
    let nowhere = w.scratch.path().join("no-such-repository");
    config.source("nowhere", nowhere.to_str().unwrap(), "1h");
    config.rule(
        "nowhere-east",
        "nowhere-apps",
        "nowhere",
        EAST,
        "enforce",
        "strict",
    );
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H1);
    let review = Review::ingress("unavail", "nowhere-apps").stamped(&w.head, &w.head_sum);
    let v = post_review(&client, &srv.base, &review).await;
    let msg = v.assert_denied("MirrorUnavailable");
    assert!(msg.contains("never synced"), "{msg}");
    assert!(msg.contains("nowhere"), "names the source: {msg}");
    assert!(msg.contains(short(&w.head)), "{msg}");
    assert_eq!(v.audit("rule"), Some("nowhere-east"));
    assert_eq!(v.audit("revision"), Some(w.head.as_str()));
    audit_line(&review.uid, "MirrorUnavailable", false).await;

    // The synced source still decides.
    let ok = Review::ingress("unavail-ok", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &srv.base, &ok)
        .await
        .assert_allowed("Fresh");

    // Not ready, and the body says which source.
    let (status, body) = srv.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("nowhere") && body.contains("never synced"),
        "{body}"
    );
    assert!(
        body.contains("last fetch failed: ") && body.contains(nowhere.to_str().unwrap()),
        "says why, naming the URL: {body}"
    );
    assert!(!body.contains("source gitops"), "gitops is synced: {body}");
    srv.stop().await;

    // mirrorUnavailable: allow lets it through, still logged.
    let mut config = w.config();
    config.source("nowhere", nowhere.to_str().unwrap(), "1h");
    config.rule(
        "nowhere-east",
        "nowhere-apps",
        "nowhere",
        EAST,
        "enforce",
        "strict",
    );
    config.failure("{ mirrorUnavailable: allow, maxMirrorStaleness: 10m, decisionTimeout: 4s }");
    let srv = Server::start(&config).await;
    let review = Review::ingress("unavail-allow", "nowhere-apps").stamped(&w.head, &w.head_sum);
    let v = post_review(&srv.client(Proto::H2), &srv.base, &review).await;
    v.assert_envelope();
    assert!(v.allowed(), "{}", v.body);
    assert_eq!(v.audit("reason"), Some("MirrorUnavailable"));
    audit_line(&review.uid, "MirrorUnavailable", true).await;
    srv.stop().await;
}

/// The listener opens before any source is cloned: a remote that accepts
/// and never answers (with the default 60 s fetchTimeout) neither delays
/// `/healthz` nor the reviews of a healthy source; `/readyz` is 503 naming
/// the unsynced source, whose reviews get `MirrorUnavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_remote_does_not_delay_serving() {
    let w = World::build();
    let remote = GitRemote::start(w.repo().path().parent().unwrap());
    remote.hang();
    let mut config = w.config();
    config.source_with("hanging", &remote.url("repo"), "1h", "60s");
    config.rule(
        "hanging-east",
        "hanging-apps",
        "hanging",
        EAST,
        "enforce",
        "strict",
    );
    let started = Instant::now();
    let srv = Server::start_serving(&config).await;
    let (status, body) = srv.get("/healthz").await;
    let healthy_after = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        healthy_after < Duration::from_secs(10),
        "/healthz answered {healthy_after:?} after start"
    );
    let client = srv.client(Proto::H2);
    // The healthy source syncs in the background, meanwhile and after.
    let fresh = eventually(Duration::from_secs(20), "a Fresh review", || async {
        let review = Review::ingress("hang-other", "prod-apps").stamped(&w.head, &w.head_sum);
        let v = post_review(&client, &srv.base, &review).await;
        (v.audit("reason") == Some("Fresh")).then_some(v)
    })
    .await;
    fresh.assert_allowed("Fresh");
    let served_after = started.elapsed();
    assert!(
        served_after < Duration::from_secs(20),
        "the healthy source was served {served_after:?} after start"
    );
    assert!(remote.hung_connections() >= 1, "the remote was asked");
    let (status, body) = srv.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("source hanging: never synced (first fetch running)"),
        "{body}"
    );
    assert!(!body.contains("source gitops"), "gitops is synced: {body}");
    let review = Review::ingress("hang-unsynced", "hanging-apps").stamped(&w.head, &w.head_sum);
    let v = post_review(&client, &srv.base, &review).await;
    let msg = v.assert_denied("MirrorUnavailable");
    assert!(msg.contains("hanging has never synced"), "{msg}");
    eprintln!(
        "hanging remote: /healthz after {healthy_after:?}, first Fresh review after {served_after:?}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_timeout() {
    let w = World::build();
    // The origin is served over git:// by a proxy that can start hanging.
    let remote = GitRemote::start(w.repo().path().parent().unwrap());
    let listed = support::git_in(w.repo().path(), &["ls-remote", &remote.url("repo"), "main"]);
    assert!(
        listed.starts_with(&w.head),
        "the git:// remote serves the origin: {listed:?}"
    );
    let mut config = ConfigBuilder::new(w.scratch.path());
    config.source_with("hanging", &remote.url("repo"), "1h", "30s");
    config.rule(
        "prod-east",
        "prod-apps",
        "hanging",
        EAST,
        "enforce",
        "strict",
    );
    config.failure("{ mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 1s }");
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H2);
    // Synced through the remote.
    let fresh = Review::ingress("dt-fresh", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &srv.base, &fresh)
        .await
        .assert_allowed("Fresh");

    // Now the remote accepts and never answers: the on-demand fetch for an
    // unknown revision cannot finish.
    remote.hang();
    let unknown = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
    let review = Review::ingress("dt", "prod-apps").stamped(unknown, &w.head_sum);
    let started = Instant::now();
    let v = post_review(&client, &srv.base, &review).await;
    let elapsed = started.elapsed();
    assert!(
        remote.hung_connections() >= 1,
        "the fetch reached the remote"
    );
    assert_eq!(
        v.audit("reason"),
        Some("DecisionTimeout"),
        "the on-demand fetch hung: no verdict is possible (answered after {elapsed:?}): {}",
        v.body
    );
    let msg = v.assert_denied("DecisionTimeout");
    assert!(msg.contains("1000 ms"), "names the budget: {msg}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "answered at the decision timeout, not later: {elapsed:?}"
    );
    assert_eq!(v.audit("revision"), Some(unknown));
    audit_line(&review.uid, "DecisionTimeout", false).await;

    // The API server's own deadline (?timeout=) shortens the budget.
    let review = Review::ingress("dt-api", "prod-apps")
        .stamped("5eed5eed5eed5eed5eed5eed5eed5eed5eed0001", &w.head_sum);
    let started = Instant::now();
    let v = post_review_query(&client, &srv.base, &review, "?timeout=1s").await;
    let elapsed = started.elapsed();
    v.assert_denied("DecisionTimeout");
    assert!(
        elapsed < Duration::from_millis(1000),
        "answered before the API server's 1s deadline: {elapsed:?}"
    );
    srv.stop().await;
}

/// Overload: with one computing thread and room for one waiting cold
/// checksum, a burst of reviews at 16 distinct cold revisions gets the
/// reviews that do not fit answered at once (`DecisionTimeout`, saying
/// "overloaded"), not after the decision timeout; the others get their
/// verdict. Retried once the burst is over, a refused review is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_at_once() {
    let w = World::build();
    // Each commit grows a file the east overlay reads by 256 KiB: 16
    // distinct cold checksums of a few MiB, each one slow enough (tens of
    // ms) for the burst to queue behind it.
    let filler: String = (0..2048).map(|i| format!("# {i:0>125}\n")).collect();
    let mut revs = Vec::new();
    let mut time = commit_time(w.repo(), &w.head);
    for i in 0..16 {
        w.repo()
            .append("bases/prod-east/patches/ingress-host.yaml", &filler);
        time += 60;
        revs.push(commit_at(w.repo(), &format!("grow {i}"), time));
    }
    let mut config = w.config();
    config.failure("{ mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 20s }");
    config.limits("{ checksumConcurrency: 1, checksumQueue: 1 }");
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H2);
    let wrong = format!("sha256:{}", "0".repeat(64));

    // Revisions older than head, under the content rule: each needs its own
    // checksum (and head's).
    let mut burst = tokio::task::JoinSet::new();
    for (i, rev) in revs[..15].iter().enumerate() {
        let client = client.clone();
        let base = srv.base.clone();
        let review = Review::ingress(&format!("burst-{i}"), "content-apps").stamped(rev, &wrong);
        burst.spawn(async move {
            let started = Instant::now();
            let v = post_review(&client, &base, &review).await;
            (review, v, started.elapsed())
        });
    }
    let answers = burst.join_all().await;
    let mut refused = Vec::new();
    for (review, v, elapsed) in &answers {
        v.assert_envelope();
        match v.audit("reason") {
            Some("DecisionTimeout") => {
                let msg = v.assert_denied("DecisionTimeout");
                assert!(msg.contains("overloaded"), "{msg}");
                assert!(
                    *elapsed < Duration::from_secs(2),
                    "refused at once, not at the 20 s deadline: {elapsed:?}"
                );
                refused.push(review.clone());
            }
            Some("ChecksumMismatch" | "StaleRevision") => {}
            other => panic!("unexpected verdict {other:?}: {}", v.body),
        }
    }
    assert!(
        refused.len() >= 5,
        "one computing and one waiting out of 15: most are refused, got {} refused",
        refused.len()
    );
    assert!(refused.len() < answers.len(), "some were decided");
    audit_line(&refused[0].uid, "DecisionTimeout", false).await;

    // The burst is over: a refused review now gets its verdict.
    let mut retry = refused[0].clone();
    retry.uid = new_uid("retry");
    let v = post_review(&client, &srv.base, &retry).await;
    assert_ne!(v.audit("reason"), Some("DecisionTimeout"), "{}", v.body);
    let (_, metrics) = srv.get("/metrics").await;
    let overloaded: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stale_guard_checksum_overloaded_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no overload counter in {metrics}"));
    assert_eq!(overloaded, refused.len());
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// modes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    let review = Review::ingress("warn", "warn-apps").stamped(&w.old, &w.old_sum);
    let v = post_review(&client, &srv.base, &review).await;
    v.assert_envelope();
    assert!(v.allowed(), "warn mode allows: {}", v.body);
    assert_eq!(v.audit("reason"), Some("StaleRevision"));
    assert_eq!(v.audit("rule"), Some("warn-east"));
    assert_eq!(v.audit("enforced"), Some("false"));
    let warnings = v.warnings();
    assert_eq!(warnings.len(), 1, "{}", v.body);
    assert!(warnings[0].contains("StaleRevision"), "{warnings:?}");
    assert!(warnings[0].contains(short(&w.old)), "{warnings:?}");
    audit_line(&review.uid, "StaleRevision", true).await;
    // A fresh apply in warn mode: no warning.
    let ok = Review::ingress("warn-ok", "warn-apps").stamped(&w.head, &w.head_sum);
    let v = post_review(&client, &srv.base, &ok).await;
    v.assert_allowed("Fresh");
    assert!(v.warnings().is_empty());
    let (_, metrics) = srv.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("stale_guard_reviews_total")
                && l.contains("decision=\"warn\"")
                && l.contains("reason=\"StaleRevision\"")),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H1);
    let review = Review::ingress("audit", "audit-apps").stamped(&w.head, &w.west_sum);
    let v = post_review(&client, &srv.base, &review).await;
    v.assert_envelope();
    assert!(v.allowed(), "audit mode allows: {}", v.body);
    assert!(
        v.warnings().is_empty(),
        "audit mode does not warn: {}",
        v.body
    );
    assert_eq!(v.audit("reason"), Some("ChecksumMismatch"));
    assert_eq!(v.audit("rule"), Some("audit-east"));
    assert_eq!(v.audit("enforced"), Some("false"));
    let line = audit_line(&review.uid, "ChecksumMismatch", true).await;
    assert_eq!(line["expected_checksum"], w.head_sum.as_str());
    assert_eq!(line["found_checksum"], w.west_sum.as_str());
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// the incident
// ---------------------------------------------------------------------------

/// The incident: the checksum key is `fluxcd.io/checksum`; a six-week-old
/// Ingress (rendered from a nested overlay whose base is a symlink outside
/// it) is re-applied with its old checksum; a broken controller stores the
/// checksum under `fluxcd` (the key split on its dots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_replay() {
    let w = World::build();
    assert!(
        w.repo().is_symlink("overlays/prod/east/base"),
        "fixture: the base is a symlink"
    );
    let mut config = w.config();
    config.checksum_key("fluxcd.io/checksum");
    let srv = Server::start(&config).await;
    let behind = w.behind(&w.old, &w.head);
    for proto in [Proto::H1, Proto::H2] {
        let client = srv.client(proto);
        // The six-week-old Ingress with its (self-consistent) old checksum.
        let old = Review::ingress("incident-old", "prod-apps")
            .annotate(REVISION_KEY, &format!("main@sha1:{}", w.old))
            .annotate("fluxcd.io/checksum", &w.old_sum);
        let v = post_review(&client, &srv.base, &old).await;
        v.assert_version(proto);
        let msg = v.assert_denied("StaleRevision");
        assert!(
            msg.contains(&format!("{behind} commits and 42 days behind")),
            "{msg}"
        );
        assert!(behind >= 20, "many commits behind: {behind}");
        audit_line(&old.uid, "StaleRevision", false).await;

        // The key split on its dots: "fluxcd" holds the checksum.
        let split = Review::ingress("incident-split", "prod-apps")
            .annotate(REVISION_KEY, &w.head)
            .annotate("fluxcd", &w.head_sum);
        let v = post_review(&client, &srv.base, &split).await;
        let msg = v.assert_denied("MissingChecksum");
        assert!(msg.contains("\"fluxcd\""), "names the near miss: {msg}");
        assert!(msg.contains("near-miss"), "{msg}");
        let line = audit_line(&split.uid, "MissingChecksum", false).await;
        assert!(line["detail"].as_str().unwrap().contains("fluxcd"));

        // The default key is not what this cluster uses: also a near miss.
        let default_key =
            Review::ingress("incident-default", "prod-apps").stamped(&w.head, &w.head_sum);
        let v = post_review(&client, &srv.base, &default_key).await;
        let msg = v.assert_denied("MissingChecksum");
        assert!(msg.contains(CHECKSUM_KEY), "{msg}");

        // The fresh apply.
        let fresh = Review::ingress("incident-fresh", "prod-apps")
            .annotate(REVISION_KEY, &format!("main@sha1:{}", w.head))
            .annotate("fluxcd.io/checksum", &w.head_sum);
        let v = post_review(&client, &srv.base, &fresh).await;
        v.assert_allowed("Fresh");
        assert_eq!(v.audit("revision"), Some(w.head.as_str()));
    }
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// the mirror follows the origin
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_makes_the_previous_revision_stale_within_a_poll() {
    let w = World::build();
    let mut config = ConfigBuilder::new(w.scratch.path());
    config.source("gitops", w.repo().path_str(), "1s");
    config.rule(
        "prod-east",
        "prod-apps",
        "gitops",
        EAST,
        "enforce",
        "strict",
    );
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H2);
    let review = || Review::ingress("poll", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &srv.base, &review())
        .await
        .assert_allowed("Fresh");

    // Someone merges to main.
    w.repo()
        .append("overlays/prod/east/ingress-class.yaml", "# tuned\n");
    let new_head = commit_at(
        w.repo(),
        "east: comment",
        commit_time(w.repo(), &w.head) + 600,
    );
    let pushed = Instant::now();
    let (v, elapsed) = eventually(Duration::from_secs(6), "StaleRevision after push", || {
        let client = client.clone();
        let base = srv.base.clone();
        let r = review();
        async move {
            let v = post_review(&client, &base, &r).await;
            v.assert_envelope();
            (v.audit("reason") == Some("StaleRevision")).then(|| (v, pushed.elapsed()))
        }
    })
    .await;
    let msg = v.assert_denied("StaleRevision");
    assert!(msg.contains("1 commit and"), "{msg}");
    assert!(msg.contains(&format!("main@{}", short(&new_head))), "{msg}");
    assert!(
        elapsed < Duration::from_millis(3500),
        "seen within one poll interval (1s) plus a fetch: {elapsed:?}"
    );
    // And the new head is fresh.
    let new_sum = checksum_at(w.repo().path(), &new_head, EAST);
    let fresh = Review::ingress("poll-new", "prod-apps").stamped(&new_head, &new_sum);
    post_review(&client, &srv.base, &fresh)
        .await
        .assert_allowed("Fresh");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_revision_is_fetched_on_demand() {
    let w = World::build();
    let srv = serve(&w).await; // pollInterval 1h: no poll during the test
    let client = srv.client(Proto::H1);
    w.repo().write(
        "bases/prod-east/namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod-apps\n  labels:\n    tier: prod\n    pci: \"true\"\n",
    );
    let new_head = commit_at(
        w.repo(),
        "prod-east: pci label",
        commit_time(w.repo(), &w.head) + 600,
    );
    let new_sum = checksum_at(w.repo().path(), &new_head, EAST);
    assert_ne!(new_sum, w.head_sum);
    let review = Review::ingress("ondemand", "prod-apps").stamped(&new_head, &new_sum);
    let started = Instant::now();
    let v = post_review(&client, &srv.base, &review).await;
    v.assert_allowed("Fresh");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(v.audit("revision"), Some(new_head.as_str()));
    let fresh_verdict = v;
    // The old head is now stale, without waiting for a poll.
    let old = Review::ingress("ondemand-old", "prod-apps").stamped(&w.head, &w.head_sum);
    let v = post_review(&client, &srv.base, &old).await;
    let msg = v.assert_denied("StaleRevision");
    assert!(msg.contains(&format!("main@{}", short(&new_head))), "{msg}");
    assert_eq!(v.audit("head"), Some(new_head.as_str()));
    srv.stop().await;
    // The Fresh verdict's audit annotations name the head it was judged
    // against: the new head, fetched on demand.
    assert_eq!(
        fresh_verdict.audit("head"),
        Some(new_head.as_str()),
        "auditAnnotations.head of a Fresh verdict must be the head after the on-demand fetch: {}",
        fresh_verdict.body
    );
}

// ---------------------------------------------------------------------------
// bad input, endpoints
// ---------------------------------------------------------------------------

/// Sends a raw body; returns (status, JSON body).
async fn post_raw(client: &reqwest::Client, base: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = client
        .post(format!("{base}/validate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /validate: {e:?}"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "a {status} error must be a JSON body ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let w = World::build();
    let srv = serve(&w).await;
    let good = Review::ingress("bad-good", "prod-apps").stamped(&w.head, &w.head_sum);
    let good_json = serde_json::to_vec(&good.to_json()).unwrap();
    let mut v1beta1 = good.to_json();
    v1beta1["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut no_uid = good.to_json();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut huge = good.to_json();
    huge["request"]["object"]["metadata"]["annotations"]["padding"] =
        serde_json::Value::String("x".repeat(10 << 20));
    let mut no_request = good.to_json();
    no_request.as_object_mut().unwrap().remove("request");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated",
            good_json[..good_json.len() / 2].to_vec(),
            400,
            "not a valid AdmissionReview",
        ),
        (
            "10 MiB",
            serde_json::to_vec(&huge).unwrap(),
            413,
            "larger than",
        ),
        (
            "v1beta1",
            serde_json::to_vec(&v1beta1).unwrap(),
            400,
            "admission.k8s.io/v1beta1",
        ),
        ("no uid", serde_json::to_vec(&no_uid).unwrap(), 400, "uid"),
        (
            "no request",
            serde_json::to_vec(&no_request).unwrap(),
            400,
            "request",
        ),
        (
            "binary",
            support::pseudo_random_bytes(4096, 7),
            400,
            "not a valid AdmissionReview",
        ),
        ("empty", Vec::new(), 400, "AdmissionReview"),
    ];
    for (i, (what, body, want_status, want_text)) in cases.into_iter().enumerate() {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        let client = srv.client(proto);
        let (status, json) = post_raw(&client, &srv.base, body).await;
        assert_eq!(status, want_status, "{what}: {json}");
        let message = json["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no JSON message: {json}"));
        assert!(
            message.contains(want_text),
            "{what}: {message:?} should mention {want_text:?}"
        );
        // And the server keeps serving, on the same client.
        let ok = Review::ingress("bad-after", "prod-apps").stamped(&w.head, &w.head_sum);
        let v = post_review(&client, &srv.base, &ok).await;
        v.assert_version(proto);
        v.assert_allowed("Fresh");
    }
    let (_, metrics) = srv.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("stale_guard_bad_requests_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    srv.stop().await;
}

/// A Kubernetes object always has metadata; a body whose object has none is
/// malformed input, not an unannotated object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_without_metadata_is_a_4xx() {
    let w = World::build();
    let srv = serve(&w).await;
    let client = srv.client(Proto::H2);
    let mut review = Review::ingress("nometa", "prod-apps");
    review.object_override = Some(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "spec": {"ingressClassName": "nginx"}
    }));
    let (status, json) = post_raw(
        &client,
        &srv.base,
        serde_json::to_vec(&review.to_json()).unwrap(),
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "expected a 4xx for an object without metadata, got {status}: {json}"
    );
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("metadata")),
        "{json}"
    );
    let ok = Review::ingress("nometa-after", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &srv.base, &ok)
        .await
        .assert_allowed("Fresh");
    srv.stop().await;
}

/// A CREATE or UPDATE whose `object` is null or missing is malformed
/// input: a 400 with a JSON message (fail closed), never an allow, even for
/// a request no rule matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_or_update_without_object_is_a_400() {
    let w = World::build();
    let srv = serve(&w).await;
    for (i, op) in ["CREATE", "UPDATE"].into_iter().enumerate() {
        for (namespace, null) in [("prod-apps", true), ("prod-apps", false), ("team-x", true)] {
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let client = srv.client(proto);
            let review = Review::ingress("noobject", namespace)
                .stamped(&w.head, &w.head_sum)
                .operation(op);
            let mut body = review.to_json();
            let request = body["request"].as_object_mut().unwrap();
            if null {
                request.insert("object".into(), serde_json::Value::Null);
            } else {
                request.remove("object");
            }
            let (status, json) =
                post_raw(&client, &srv.base, serde_json::to_vec(&body).unwrap()).await;
            assert_eq!(status, 400, "{op} {namespace} null={null}: {json}");
            let message = json["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(op) && message.contains("without an object"),
                "{op}: {json}"
            );
        }
    }
    // DELETE carries no object and stays out of scope.
    let mut delete = Review::ingress("noobject-delete", "prod-apps")
        .operation("DELETE")
        .to_json();
    delete["request"]["object"] = serde_json::Value::Null;
    let (status, json) = post_raw(
        &srv.client(Proto::H2),
        &srv.base,
        serde_json::to_vec(&delete).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["response"]["allowed"], true, "{json}");
    assert_eq!(
        json["response"]["auditAnnotations"]["reason"], "OutOfScope",
        "{json}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_metrics() {
    let w = World::build();
    let srv = serve(&w).await;
    for proto in [Proto::H1, Proto::H2] {
        let client = srv.client(proto);
        for path in ["/healthz", "/readyz"] {
            let resp = client
                .get(format!("{}{path}", srv.base))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.version(), proto.version());
            assert_eq!(resp.status().as_u16(), 200, "{path}");
        }
    }
    let client = srv.client(Proto::H2);
    let fresh = Review::ingress("m-fresh", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &srv.base, &fresh)
        .await
        .assert_allowed("Fresh");
    let stale = Review::ingress("m-stale", "prod-apps").stamped(&w.old, &w.old_sum);
    post_review(&client, &srv.base, &stale)
        .await
        .assert_denied("StaleRevision");
    let (status, metrics) = srv.get("/metrics").await;
    assert_eq!(status, 200);
    let has = |decision: &str, reason: &str| {
        metrics.lines().any(|l| {
            l.starts_with("stale_guard_reviews_total{")
                && l.contains(&format!("decision=\"{decision}\""))
                && l.contains(&format!("reason=\"{reason}\""))
                && !l.ends_with(" 0")
        })
    };
    assert!(has("allow", "Fresh"), "{metrics}");
    assert!(has("deny", "StaleRevision"), "{metrics}");
    assert!(metrics.contains("source=\"gitops\""), "{metrics}");
    // Cache sizes: the Fresh review computed (and kept) one result.
    let gauge = |name: &str, cache: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains("source=\"gitops\"")
                    && l.contains(&format!("cache=\"{cache}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for {cache}: {metrics}"))
    };
    assert!(gauge("stale_guard_cache_entries", "results") >= 1);
    assert!(
        gauge("stale_guard_cache_weight", "results")
            > gauge("stale_guard_cache_entries", "results")
    );
    assert!(gauge("stale_guard_cache_entries", "blob_digests") >= 1);
    srv.stop().await;
}
