//! Which configured source a Flux or Argo CD git source is: URLs compared
//! after normalisation, then the branch. Pure; shared by `scan` and the
//! webhook's controller provenance.

use crate::config::SourceConfig;

/// What a controller follows in its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    /// A branch by name.
    Branch(String),
    /// The remote's default branch (Argo CD `HEAD` or empty, a Flux
    /// GitRepository without `ref`): any configured branch of the URL.
    Default,
    /// A tag, semver range or commit: not a branch, never stale against one.
    Pinned(String),
}

/// A git URL reduced to `host[:port]/path` (or the path of a local
/// repository): scheme, user, a trailing `/` and `.git` dropped, the host
/// lower-cased, scp-like `git@host:path` read as `ssh://git@host/path`, so
/// `https://GitHub.com/org/repo.git`, `ssh://git@github.com/org/repo` and
/// `git@github.com:org/repo` compare equal.
pub fn normalise_url(url: &str) -> String {
    let url = url.trim();
    let (host_path, remote) = if let Some((_, rest)) = url.split_once("://") {
        if let Some(path) = url.strip_prefix("file://") {
            (path.to_owned(), false)
        } else {
            (rest.to_owned(), true)
        }
    } else if let Some((user_host, path)) = url.split_once(':')
        && !user_host.contains('/')
        && !url.starts_with('/')
    {
        // scp-like: [user@]host:path
        (
            format!("{user_host}/{}", path.trim_start_matches('/')),
            true,
        )
    } else {
        (url.to_owned(), false)
    };
    let mut s = host_path;
    if remote {
        if let Some((authority, path)) = s.split_once('/') {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = host.to_ascii_lowercase();
            let host = host
                .strip_suffix(":443")
                .or_else(|| host.strip_suffix(":22"))
                .unwrap_or(&host)
                .to_owned();
            s = format!("{host}/{path}");
        } else {
            s = s.to_ascii_lowercase();
        }
    }
    while s.ends_with('/') && s.len() > 1 {
        s.pop();
    }
    if let Some(stripped) = s.strip_suffix(".git") {
        s = stripped.to_owned();
    }
    while s.ends_with('/') && s.len() > 1 {
        s.pop();
    }
    s
}

/// The configured source for (`url`, `git_ref`), or why there is none.
pub fn match_source<'c>(
    sources: &'c [SourceConfig],
    url: &str,
    git_ref: &GitRef,
) -> Result<&'c SourceConfig, String> {
    let want = normalise_url(url);
    let same_url: Vec<&SourceConfig> = sources
        .iter()
        .filter(|s| normalise_url(&s.url) == want)
        .collect();
    let Some(first) = same_url.first() else {
        return Err(format!("git URL {url} is not a configured source"));
    };
    match git_ref {
        GitRef::Default => Ok(first),
        GitRef::Branch(b) => same_url
            .iter()
            .find(|s| &s.branch == b)
            .copied()
            .ok_or_else(|| {
                format!(
                    "branch {b:?} of {url} is not configured (source {} follows {:?})",
                    first.name, first.branch
                )
            }),
        GitRef::Pinned(what) => Err(format!(
            "pinned to {what} of {url}, not a branch: nothing to be behind"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_one_repository_compare_equal() {
        let want = "github.com/org/repo";
        for url in [
            "https://github.com/org/repo.git",
            "https://GitHub.com/org/repo/",
            "ssh://git@github.com/org/repo",
            "ssh://git@github.com:22/org/repo.git",
            "git@github.com:org/repo.git",
            "https://token@github.com:443/org/repo",
        ] {
            assert_eq!(normalise_url(url), want, "{url}");
        }
        assert_eq!(normalise_url("/srv/git/repo.git"), "/srv/git/repo");
        assert_eq!(normalise_url("file:///srv/git/repo/"), "/srv/git/repo");
        assert_ne!(
            normalise_url("https://github.com/org/repo2"),
            normalise_url("https://github.com/org/repo")
        );
    }

    fn source(name: &str, url: &str, branch: &str) -> SourceConfig {
        let mut s: SourceConfig =
            serde_yaml_ng::from_str(&format!("{{name: {name}, url: {url}}}")).unwrap();
        s.branch = branch.into();
        s
    }

    #[test]
    fn branch_picks_among_sources_of_one_url() {
        let sources = [
            source("main", "https://git.example.com/g.git", "main"),
            source("staging", "https://git.example.com/g.git", "staging"),
        ];
        let url = "ssh://git@git.example.com/g";
        let b = |n: &str| GitRef::Branch(n.into());
        assert_eq!(
            match_source(&sources, url, &b("staging")).unwrap().name,
            "staging"
        );
        assert_eq!(
            match_source(&sources, url, &GitRef::Default).unwrap().name,
            "main"
        );
        let e = match_source(&sources, url, &b("dev")).unwrap_err();
        assert!(e.contains("branch \"dev\""), "{e}");
        let e = match_source(&sources, url, &GitRef::Pinned("tag v1".into())).unwrap_err();
        assert!(e.contains("pinned to tag v1"), "{e}");
        let e = match_source(&sources, "https://other.example/x", &GitRef::Default).unwrap_err();
        assert!(e.contains("not a configured source"), "{e}");
    }
}
