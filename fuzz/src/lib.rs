//! Helpers shared by the fuzz targets: scratch directories that do not pile
//! up in the temporary directory across runs, and a hermetic `git`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch directory `<tmp>/sg-fuzz-<name>-<pid>`. libFuzzer ends
/// the process with `exit()`, so no destructor removes it: instead, the
/// directories of earlier runs whose process is gone are removed here.
pub fn scratch_dir(name: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let prefix = format!("sg-fuzz-{name}-");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(pid) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// Runs `git` in `dir` with no user or system configuration and fixed
/// identities and dates (so commit ids are the same on every machine).
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_at(dir, 1_700_000_000, args)
}

/// [`git`] with author and committer dates at `epoch` seconds.
pub fn git_at(dir: &Path, epoch: i64, args: &[&str]) -> String {
    let date = format!("{epoch} +0000");
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Fuzz")
        .env("GIT_AUTHOR_EMAIL", "fuzz@example.com")
        .env("GIT_COMMITTER_NAME", "Fuzz")
        .env("GIT_COMMITTER_EMAIL", "fuzz@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .args(["-c", "commit.gpgsign=false", "-c", "core.symlinks=true"])
        .args(["-c", "core.autocrlf=false", "-c", "gc.auto=0"])
        .args(args)
        .output()
        .expect("spawn git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
