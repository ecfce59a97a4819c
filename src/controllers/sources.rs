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
    let normalised: Vec<String> = sources.iter().map(|s| normalise_url(&s.url)).collect();
    let want = GitSource::new(url, git_ref.clone());
    match_normalised(normalised.iter().map(String::as_str).zip(sources), &want)
}

/// A controller's git source: its URL as written and normalised once,
/// and what it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub normalised: String,
    pub git_ref: GitRef,
}

impl GitSource {
    pub fn new(url: &str, git_ref: GitRef) -> GitSource {
        GitSource {
            url: url.to_owned(),
            normalised: normalise_url(url),
            git_ref,
        }
    }
}

/// [`match_source`] over sources whose URLs are normalised already
/// (`(normalised URL, source)`, in configuration order): no allocation
/// unless it fails.
pub fn match_normalised<'n, 'c, I>(sources: I, want: &GitSource) -> Result<&'c SourceConfig, String>
where
    I: Iterator<Item = (&'n str, &'c SourceConfig)> + Clone,
{
    let url = &want.url;
    let mut same_url = sources
        .filter(|(normalised, _)| *normalised == want.normalised)
        .map(|(_, s)| s);
    let Some(first) = same_url.clone().next() else {
        return Err(format!("git URL {url} is not a configured source"));
    };
    match &want.git_ref {
        GitRef::Default => Ok(first),
        GitRef::Branch(b) => same_url.find(|s| &s.branch == b).ok_or_else(|| {
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
