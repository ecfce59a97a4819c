//! The blob cap (`limits.maxBlobBytes`, default 16 MiB): a closure file,
//! kustomization or symlink target over it is an `OverlayError` naming the
//! file and its size, refused from the object header before it is read,
//! so a commit with a huge file cannot take the process's memory with it.
//! Real repositories made by the git CLI; the `checksum` command's peak
//! RSS measured with wait4; the webhook through the real server over TLS.
#![cfg(unix)]

mod support;
mod webhook_support;

use support::{Repo, checksum_run};
use webhook_support::*;

/// Peak RSS a `checksum` run may reach while refusing a huge blob: the
/// process alone is ~10 MiB; reading the blob would be hundreds.
const PEAK_KIB: u64 = 64 << 10;

/// A `checksum` run that must fail with exit 1, saying each of `says`,
/// without its peak RSS reaching [`PEAK_KIB`].
fn assert_refused_lean(run: &support::Run, what: &str, says: &[&str]) {
    eprintln!("peak RSS refusing {what}: {} KiB", run.peak_rss_kib);
    let err = run.fails_with(1);
    for phrase in says {
        assert!(err.contains(phrase), "{what}: {err}");
    }
    assert!(
        run.peak_rss_kib < PEAK_KIB,
        "peak RSS {} KiB refusing {what}",
        run.peak_rss_kib
    );
}

#[test]
fn a_file_over_the_cap_is_refused_from_its_header() {
    let size: u64 = 200 << 20;
    let repo = Repo::with_big_file(
        "big/data.yaml",
        size,
        &[("big/kustomization.yaml", "resources:\n- data.yaml\n")],
    );
    assert_refused_lean(
        &checksum_run(&repo, "big", None, &[]),
        "a 200 MiB file",
        &[
            "file big/data.yaml is 209715200 bytes",
            "over the 16777216-byte limit (limits.maxBlobBytes)",
        ],
    );
}

#[test]
fn a_huge_kustomization_is_refused_before_it_is_read() {
    let repo = Repo::with_big_file("huge/kustomization.yaml", 100 << 20, &[]);
    assert_refused_lean(
        &checksum_run(&repo, "huge", None, &[]),
        "a 100 MiB kustomization",
        &["kustomization huge/kustomization.yaml is 104857600 bytes"],
    );
}

#[test]
fn a_kustomization_over_the_parse_limit_is_refused_before_it_is_read() {
    // 2 MiB of one-line entries: parsing it used to peak at about 170 MiB
    // (a 15 MiB one at 946 MiB, for 47 s).
    let repo = Repo::new();
    repo.write(
        "long/kustomization.yaml",
        format!("resources:\n{}", "- a\n".repeat(512 << 10)),
    );
    repo.write("long/a", "x: 1\n");
    repo.commit("long list");
    assert_refused_lean(
        &checksum_run(&repo, "long", None, &[]),
        "a 2 MiB kustomization",
        &[
            "kustomization long/kustomization.yaml is 2097163 bytes, over the 524288-byte limit (limits.maxKustomizationBytes)",
        ],
    );
}

#[test]
fn the_cap_is_configurable_and_covers_links_and_plugin_configs() {
    let repo = Repo::new();
    repo.write("app/kustomization.yaml", "resources:\n- cm.yaml\n");
    repo.write("app/cm.yaml", "x".repeat(2000));
    repo.write("gen/kustomization.yaml", "generators:\n- plugin.yaml\n");
    repo.write(
        "gen/plugin.yaml",
        format!(
            "apiVersion: example.com/v1\nkind: Gen\nmetadata:\n  name: g\n# {}\n",
            "y".repeat(3000)
        ),
    );
    repo.write("link/kustomization.yaml", "resources:\n- cm.yaml\n");
    repo.commit_with_raw_symlink("link/cm.yaml", "z".repeat(5000).as_bytes(), "links");

    // The default cap holds all of them.
    let default_sum = checksum_run(&repo, "app", None, &[])
        .first_line()
        .to_owned();
    let raised = checksum_run(&repo, "app", None, &["--max-blob-bytes", "2000"]);
    assert_eq!(raised.first_line(), default_sum, "a file at the cap passes");

    for (overlay, says) in [
        (
            "app",
            "file app/cm.yaml is 2000 bytes, over the 1999-byte limit",
        ),
        ("gen", "plugin config gen/plugin.yaml is"),
        (
            "link",
            "symlink link/cm.yaml has a target of 5000 bytes, over the 1999-byte limit",
        ),
    ] {
        let run = checksum_run(&repo, overlay, None, &["--max-blob-bytes", "1999"]);
        let err = run.fails_with(1);
        assert!(err.contains(says), "{overlay}: {err}");
        assert!(err.contains("limits.maxBlobBytes"), "{overlay}: {err}");
    }
    // `verify` (and `stamp`) take the same limits as `checksum`.
    let manifests = repo.scratch().join("rendered.yaml");
    std::fs::write(
        &manifests,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    )
    .unwrap();
    let args = [
        "verify",
        "--repo",
        repo.path_str(),
        "--overlay",
        "app",
        "--max-blob-bytes",
        "1999",
    ];
    let run = support::run_sg(&[&args[..], &[manifests.to_str().unwrap()]].concat());
    assert!(
        run.stderr
            .contains("file app/cm.yaml is 2000 bytes, over the 1999-byte limit"),
        "{}",
        run.stderr
    );
    let bad = checksum_run(&repo, "app", None, &["--max-blob-bytes", "0"]);
    assert!(
        bad.fails_with(2).contains("max-blob-bytes"),
        "{}",
        bad.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_applies_limits_max_blob_bytes() {
    let repo = Repo::new();
    repo.write("app/kustomization.yaml", "resources:\n- cm.yaml\n");
    repo.write("app/cm.yaml", "x".repeat(2000));
    let head = repo.commit("app");
    let scratch = tempfile::tempdir().unwrap();
    let mut config = ConfigBuilder::new(scratch.path());
    config.source("gitops", repo.path_str(), "1h");
    config.rule("app", "prod-apps", "gitops", "app", "enforce", "strict");
    config.limits("{ maxBlobBytes: 1000 }");
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H2);
    let sum = format!("sha256:{}", "0".repeat(64));
    let review = Review::ingress("blob", "prod-apps").stamped(&head, &sum);
    let v = post_review(&client, &srv.base, &review).await;
    let msg = v.assert_denied("OverlayError");
    assert!(
        msg.contains(
            "file app/cm.yaml is 2000 bytes, over the 1000-byte limit (limits.maxBlobBytes)"
        ),
        "{msg}"
    );
    srv.stop().await;
}
