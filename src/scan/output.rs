//! The scan report as a table grouped by cluster, as JSON, or as
//! Prometheus text exposition (for node-exporter's textfile collector).

use super::{ClusterReport, Item, Report};
use crate::policy::human_age;
use crate::scan::verdict::Severity;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Prometheus,
}

pub fn render(report: &Report, format: Format) -> Result<String, String> {
    match format {
        Format::Table => Ok(table(report)),
        Format::Json => serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .map_err(|e| format!("rendering JSON: {e}")),
        Format::Prometheus => Ok(prometheus(report)),
    }
}

fn short(rev: Option<crate::policy::Revision>) -> String {
    rev.map_or_else(|| "-".to_owned(), |r| r.short().to_string())
}

fn item_row(i: &Item) -> [String; 8] {
    let v = &i.verdict;
    [
        i.kind.clone(),
        if i.namespace.is_empty() {
            "-".to_owned()
        } else {
            i.namespace.clone()
        },
        i.name.clone(),
        i.source.clone().unwrap_or_else(|| "-".to_owned()),
        short(v.revision),
        v.behind_commits
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        v.age_seconds.map_or_else(|| "-".to_owned(), human_age),
        match i.severity {
            Severity::Ok => v.reason.to_string(),
            Severity::Stale => format!("{} !", v.reason),
            Severity::Error => format!("{} ?", v.reason),
        },
    ]
}

/// A readable table per cluster; then, for every object that is not OK,
/// the full message.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    for s in &report.sources {
        let _ = match (&s.head, &s.error) {
            (Some(h), None) => writeln!(
                out,
                "source {}: {}@{}",
                s.name,
                s.branch,
                &h[..7.min(h.len())]
            ),
            (Some(h), Some(e)) => writeln!(
                out,
                "source {}: {}@{} ({e})",
                s.name,
                s.branch,
                &h[..7.min(h.len())]
            ),
            (None, e) => writeln!(
                out,
                "source {}: {} unavailable: {}",
                s.name,
                s.branch,
                e.as_deref().unwrap_or("never synced")
            ),
        };
    }
    for c in &report.clusters {
        out.push('\n');
        cluster_table(&mut out, c);
    }
    let (stale, errors) = report.counts();
    let _ = writeln!(
        out,
        "\n{} clusters, {} objects: {stale} stale beyond --max-age {}, {errors} errors",
        report.clusters.len(),
        report.clusters.iter().map(|c| c.items.len()).sum::<usize>(),
        report.max_age,
    );
    out
}

fn cluster_table(out: &mut String, c: &ClusterReport) {
    let stale = c
        .items
        .iter()
        .filter(|i| i.severity == Severity::Stale)
        .count();
    if !c.reachable {
        let _ = writeln!(out, "CLUSTER {}: unreachable", c.name);
    } else {
        let _ = writeln!(
            out,
            "CLUSTER {}: {} objects, {stale} stale",
            c.name,
            c.items.len()
        );
    }
    for e in &c.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    for n in &c.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    if c.items.is_empty() {
        return;
    }
    let header = [
        "KIND",
        "NAMESPACE",
        "NAME",
        "SOURCE",
        "REVISION",
        "BEHIND",
        "AGE",
        "VERDICT",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 8]> = std::iter::once(header)
        .chain(c.items.iter().map(item_row))
        .collect();
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::from("  ");
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for i in c.items.iter().filter(|i| i.severity != Severity::Ok) {
        let _ = writeln!(
            out,
            "  - {} {}/{}: {}",
            i.kind, i.namespace, i.name, i.verdict.message
        );
    }
}

/// A label value escaped as the text format requires.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Prometheus text exposition format 0.0.4.
pub fn prometheus(report: &Report) -> String {
    let mut out = String::new();
    let ids = |c: &ClusterReport, i: &Item| {
        format!(
            "cluster=\"{}\",kind=\"{}\",namespace=\"{}\",name=\"{}\"",
            label(&c.name),
            label(&i.kind),
            label(&i.namespace),
            label(&i.name)
        )
    };
    let every = || {
        report
            .clusters
            .iter()
            .flat_map(|c| c.items.iter().map(move |i| (c, i)))
    };
    out.push_str(
        "# HELP stale_guard_scan_stale 1 when the object is stale beyond --max-age or would be denied by the webhook now, else 0; reason is the verdict.\n\
         # TYPE stale_guard_scan_stale gauge\n",
    );
    for (c, i) in every() {
        let _ = writeln!(
            out,
            "stale_guard_scan_stale{{{},reason=\"{}\"}} {}",
            ids(c, i),
            i.verdict.reason,
            u8::from(i.severity == Severity::Stale)
        );
    }
    out.push_str(
        "# HELP stale_guard_scan_behind_commits Commits between the applied revision and the branch head (0 at head).\n\
         # TYPE stale_guard_scan_behind_commits gauge\n",
    );
    for (c, i) in every() {
        if let Some(n) = i.verdict.behind_commits {
            let _ = writeln!(out, "stale_guard_scan_behind_commits{{{}}} {n}", ids(c, i));
        }
    }
    out.push_str(
        "# HELP stale_guard_scan_age_seconds How far the applied revision's commit time is behind the head's.\n\
         # TYPE stale_guard_scan_age_seconds gauge\n",
    );
    for (c, i) in every() {
        if let Some(a) = i.verdict.age_seconds {
            let _ = writeln!(out, "stale_guard_scan_age_seconds{{{}}} {a}", ids(c, i));
        }
    }
    out.push_str(
        "# HELP stale_guard_scan_cluster_up 1 when the cluster was read completely, 0 when it could not be reached or a list failed.\n\
         # TYPE stale_guard_scan_cluster_up gauge\n",
    );
    for c in &report.clusters {
        let _ = writeln!(
            out,
            "stale_guard_scan_cluster_up{{cluster=\"{}\"}} {}",
            label(&c.name),
            u8::from(c.reachable && c.errors.is_empty())
        );
    }
    out.push_str(
        "# HELP stale_guard_scan_last_run_timestamp_seconds When this scan ran (alert when the textfile grows old).\n\
         # TYPE stale_guard_scan_last_run_timestamp_seconds gauge\n",
    );
    let _ = writeln!(
        out,
        "stale_guard_scan_last_run_timestamp_seconds {}",
        report.generated_at
    );
    out
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over `path` (the textfile collector never
/// reads half a file).
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let err =
        |what: &str, e: &dyn std::fmt::Display| format!("writing {}: {what}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".stale-guard-scan-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| {
            err(
                &format!("creating a temporary file in {}", dir.display()),
                &e,
            )
        })?;
    tmp.write_all(contents.as_bytes())
        .map_err(|e| err("writing the temporary file", &e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| err("syncing the temporary file", &e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Readable by a node-exporter running as another user.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| err("setting permissions", &e))?;
    }
    tmp.persist(path)
        .map_err(|e| err("renaming into place", &e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.prom");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("scan.prom")]);
        let e = write_atomically(&dir.path().join("missing/scan.prom"), "x").unwrap_err();
        assert!(e.contains("missing/scan.prom"), "{e}");
    }
}
