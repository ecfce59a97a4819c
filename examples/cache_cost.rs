//! Live heap bytes per checksum-cache unit, the number behind the default
//! `limits.caches` (docs/benchmarks.md, "Checksum cache cost", has the
//! figures and the commands). Computes the checksum
//! of OVERLAY at every commit of a repository's `main`, oldest first, with
//! unbounded caches, and divides the growth of glibc's in-use heap
//! (`mallinfo2`) by the growth of the caches' weight:
//!
//!   cargo run --release --example cache_cost -- REPO OVERLAY
//!
//! glibc only (mallinfo2). docs/benchmarks.md makes a repository with one
//! new blob per commit inside the overlay.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use stale_guard::checksum::{CacheLimits, Caches, ChecksumEngine};
    use std::sync::Arc;

    // SAFETY: mallinfo2 only reads the allocator's counters.
    let live = || unsafe { libc::mallinfo2().uordblks };
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(overlay)) = (args.next(), args.next()) else {
        return Err("usage: cache_cost REPO OVERLAY".into());
    };
    let out = std::process::Command::new("git")
        .args(["-C", &dir, "rev-list", "--reverse", "main"])
        .output()?;
    let revs = String::from_utf8(out.stdout)?
        .lines()
        .map(|l| gix::ObjectId::from_hex(l.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((first, rest)) = revs.split_first() else {
        return Err("no commits on main".into());
    };
    let unbounded = 1 << 40;
    let caches = Arc::new(Caches::new(CacheLimits {
        blob_digests: unbounded,
        tree_entries: unbounded,
        kustomizations: unbounded,
        result_entries: unbounded,
    }));
    let engine = ChecksumEngine::with_caches(gix::open(&dir)?.into_sync(), caches.clone());
    let weight = |c: &Caches| c.sizes().iter().map(|s| s.2).sum::<u64>();
    engine.checksum(*first, &overlay)?;
    let (bytes0, units0) = (live(), weight(&caches));
    for rev in rest {
        engine.checksum(*rev, &overlay)?;
    }
    let (bytes1, units1) = (live(), weight(&caches));
    for (name, entries, weight) in caches.sizes() {
        println!("{name}: {entries} entries, weight {weight}");
    }
    let grown = bytes1.saturating_sub(bytes0) as f64;
    println!(
        "{} commits: {} units, {:.0} KB live: {:.0} bytes per unit, {:.0} bytes per commit",
        rest.len(),
        units1 - units0,
        grown / 1000.0,
        grown / (units1 - units0).max(1) as f64,
        grown / rest.len().max(1) as f64
    );
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    eprintln!("cache_cost needs glibc (mallinfo2)");
}
