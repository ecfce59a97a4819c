//! The mirror's small on-disk state: the last successful fetch (time and
//! head), so that a restart knows its staleness without reaching the remote.
//! Written atomically (temporary file, fsync, rename) inside the mirror.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file's name inside the bare mirror (git ignores unknown files there).
pub(crate) const STATE_FILE: &str = "stale-guard-mirror.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MirrorState {
    pub(crate) version: u32,
    /// The source URL, userinfo redacted: a state written for another source
    /// is ignored.
    pub(crate) url: String,
    pub(crate) branch: String,
    /// Last successful fetch, milliseconds since the epoch.
    pub(crate) last_success_ms: u64,
    /// The head that fetch observed, and when it was first observed.
    pub(crate) head: String,
    pub(crate) head_observed_ms: u64,
}

pub(crate) fn path(mirror: &Path) -> PathBuf {
    mirror.join(STATE_FILE)
}

pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Reads the state; `None` when absent or unreadable (treated as never synced).
pub(crate) fn read(mirror: &Path) -> Option<MirrorState> {
    let bytes = std::fs::read(path(mirror)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the state atomically.
pub(crate) fn write(mirror: &Path, state: &MirrorState) -> std::io::Result<()> {
    let target = path(mirror);
    let tmp = mirror.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &target)?;
    if let Ok(dir) = std::fs::File::open(mirror) {
        let _ = dir.sync_all();
    }
    Ok(())
}
