//! Pinned checksum vectors (docs/checksum.md): small repositories built by
//! `tests/vectors/build.sh`, their closures, and their checksums. The pins
//! were computed by the engine and cross-checked against the independent
//! recomputation in `tests/support` (SHA-256 over git objects); both must
//! keep agreeing with them.

mod support;

use support::*;

struct Vector {
    repo: &'static str,
    overlay: &'static str,
    /// The commit build.sh makes (fixed identity and dates).
    revision: &'static str,
    entries: &'static [&'static str],
    checksum: &'static str,
}

const VECTORS: &[Vector] = &[
    Vector {
        repo: "plain",
        overlay: "overlay",
        revision: "d9ac2c04d3c5be2cd0f40c926b6b8d1eaad2cf60",
        entries: &[
            "file:base/deployment.yaml",
            "file:base/kustomization.yaml",
            "file:base/service.yaml",
            "file:overlay/kustomization.yaml",
            "file:overlay/replicas.yaml",
        ],
        checksum: "sha256:7363d625b7b01246562af0317d2d77f1931dd6cd89a6e39af8f458b16d6e910c",
    },
    Vector {
        repo: "symlinked",
        overlay: "overlays/prod/east",
        revision: "b5fd0a5474653da2c75b578ddebeda6a8481c883",
        entries: &[
            "file:bases/app/deployment.yaml",
            "file:bases/app/kustomization.yaml",
            "file:overlays/prod/east/kustomization.yaml",
            "file:shared/app.env",
            "link:bases/app/app.env",
            "link:overlays/prod/east/base",
        ],
        checksum: "sha256:9a45f444c3f92501584fc2689d2886f8f63f8c7ece27ee055ad3fc3c00c9db75",
    },
    Vector {
        repo: "generators",
        overlay: "app",
        revision: "223319c16b014f1be4d17d5fa5603caee3311cb9",
        entries: &[
            "file:app/app.properties",
            "file:app/cm.yaml",
            "file:app/creds.env",
            "file:app/files/motd.txt",
            "file:app/kustomization.yaml",
            "file:app/settings.env",
            "remote:https://github.com/example/platform//deploy/base?ref=v1.2.3",
        ],
        checksum: "sha256:0768bb37c8020d36ec5de9de1d01acb9063a4efc85ff5cbd14ec9bdfe932691d",
    },
    Vector {
        repo: "helm",
        overlay: "deploy",
        revision: "5993e2377daa7636a0df0ed74d9514d7806d6572",
        entries: &[
            "file:deploy/charts/hello/.helmignore",
            "file:deploy/charts/hello/Chart.yaml",
            "file:deploy/charts/hello/README.md",
            "file:deploy/charts/hello/templates/deployment.yaml",
            "file:deploy/charts/hello/values.yaml",
            "file:deploy/kustomization.yaml",
            "file:deploy/values-prod.yaml",
            "remote:https://charts.example.com/stable/redis@18.0.0",
        ],
        checksum: "sha256:1b113e37b4cf61735c2c40fbfbb985ffc1a0930b2bfd75aa90e79383ea557b5f",
    },
    Vector {
        repo: "helm-repo-slash",
        overlay: "deploy",
        revision: "9046b5e83b602cac749475911cbb35de6f5dd1ca",
        entries: &[
            "file:deploy/kustomization.yaml",
            "remote:https://charts.example.com/stable/redis@18.0.0",
        ],
        checksum: "sha256:1bb8ee6f175a8055638a483d70faa15d6908f6073224d4bfc31bbbf7f91e421b",
    },
];

#[test]
fn vectors_match_their_pinned_checksums() {
    for v in VECTORS {
        let r = vector_repo(v.repo);
        assert_eq!(
            r.head(),
            v.revision,
            "{}: build.sh is not deterministic",
            v.repo
        );
        // The pin is what the algorithm gives on these bytes…
        assert_eq!(
            checksum_from_names(&r, "HEAD", v.entries),
            v.checksum,
            "{}: independent recomputation differs from the pin",
            v.repo
        );
        // …and what the engine gives.
        let (sum, names) = list(&r, v.overlay, None);
        assert_eq!(names, v.entries, "{}: closure", v.repo);
        assert_eq!(
            sum, v.checksum,
            "{}: engine checksum differs from the pin",
            v.repo
        );
        assert_eq!(checksum(&r, v.overlay, Some(v.revision)), v.checksum);
        assert_eq!(cross_check(&r, v.overlay, v.revision), v.checksum);
    }
}

/// The complete `--list` output of the symlinked vector.
const SYMLINKED_LIST: &str = "\
sha256:9a45f444c3f92501584fc2689d2886f8f63f8c7ece27ee055ad3fc3c00c9db75
file:bases/app/deployment.yaml
file:bases/app/kustomization.yaml
file:overlays/prod/east/kustomization.yaml
file:shared/app.env
link:bases/app/app.env
link:overlays/prod/east/base
";

#[test]
fn symlinked_vector_list_output_is_pinned() {
    let r = vector_repo("symlinked");
    let run = checksum_run(&r, "overlays/prod/east", None, &["--list"]);
    assert_eq!(run.ok(), SYMLINKED_LIST);
    let run = checksum_run(&r, "overlays/prod/east", None, &[]);
    assert_eq!(
        run.ok(),
        SYMLINKED_LIST.lines().next().unwrap().to_string() + "\n"
    );
}

#[test]
fn vector_json_output_is_pinned() {
    let r = vector_repo("symlinked");
    let doc = json(&r, "overlays/prod/east", None);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["checksum"], VECTORS[1].checksum);
    assert_eq!(doc["revision"], VECTORS[1].revision);
    assert_eq!(doc["overlay"], "overlays/prod/east");
    let entries = json_entries(&doc);
    let link = entries
        .iter()
        .find(|e| e.name == "link:overlays/prod/east/base")
        .unwrap();
    assert_eq!(link.kind, "link");
    assert_eq!(link.target, "overlays/prod/east/base");
    assert_eq!(link.sha256, hex::encode(sha256(b"../../../bases/app")));
}
