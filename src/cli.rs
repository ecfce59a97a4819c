//! The command line: parsing, dispatch, output formats and exit codes
//! (0 success, 1 a failed check or operation, 2 bad usage or bad input).

use crate::checksum::{ChecksumEngine, ChecksumError, OverlayChecksum};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "stale-guard",
    version,
    about = "Blocks stale GitOps applies at the Kubernetes API server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay the incident on this machine: a GitOps repo, the real webhook over TLS, three applies.
    Demo(DemoArgs),
    /// Write a CA and a serving certificate for the webhook's Service; print the caBundle.
    Certs(CertsArgs),
    /// Run the admission webhook (HTTPS only).
    Serve(ServeArgs),
    /// Print the overlay checksum (version 1) at a revision, read from git objects.
    Checksum(ChecksumArgs),
    /// Annotate rendered manifests (stdin) with the revision and overlay checksum; write them to stdout.
    ///
    /// Reads multi-document YAML (`kustomize build` output) and writes every
    /// object back with `metadata.annotations` carrying the full commit id of
    /// REV and the overlay checksum computed from the git tree at REV (never
    /// from the working tree). Items of a `List` are annotated one by one.
    /// Document and key order are kept; YAML comments are lost and formatting is normalised. Input with no object is refused (exit 2).
    /// Refuses (exit 1) when files the overlay reads differ in the working
    /// tree, unless --allow-dirty.
    Stamp(StampArgs),
    /// Check that rendered manifests carry annotations the webhook would accept at head (CI smoke test).
    ///
    /// Every object must carry the revision of REV (default HEAD) and the
    /// overlay checksum at it. Exit 0 when all pass; exit 1 with a report
    /// naming each failing object and the webhook's reason code.
    Verify(VerifyArgs),
    /// Find what is already stale in running clusters (objects, Flux Kustomizations, Argo CD Applications).
    ///
    /// Reads each cluster's objects of the kinds and namespaces named by the
    /// rules, Flux Kustomizations and Argo CD Applications, and judges each
    /// against the configured sources' mirrors like the webhook would.
    /// Exit 0 when nothing is stale beyond --max-age, 1 when something is,
    /// 2 on errors (a cluster that cannot be read, a mirror that cannot be
    /// fetched, bad usage); every reachable cluster is still reported.
    Scan(ScanArgs),
}

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// The configuration file (the webhook's; its sources, rules and annotation keys are used).
    #[arg(long)]
    pub config: PathBuf,
    /// Kubeconfig contexts to scan (comma-separated or repeated); default the current context, or the in-cluster configuration without a kubeconfig.
    #[arg(long, value_delimiter = ',', conflicts_with = "all_contexts")]
    pub context: Vec<String>,
    /// Scan every context in the kubeconfig.
    #[arg(long)]
    pub all_contexts: bool,
    /// The kubeconfig file (default $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Tolerate revisions at most this far behind head by commit time (e.g. 10m, 1h).
    #[arg(long, default_value = "0s", value_parser = crate::scan::MaxAge::parse)]
    pub max_age: crate::scan::MaxAge,
    /// Output on stdout.
    #[arg(long, value_enum, default_value_t = crate::scan::output::Format::Table)]
    pub output: crate::scan::output::Format,
    /// Also write the Prometheus text to this file, atomically (node-exporter textfile collector).
    #[arg(long)]
    pub prometheus_file: Option<PathBuf>,
    /// Where to keep the git mirrors (default: the configuration's mirrorDir).
    #[arg(long)]
    pub mirror_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the webhook running afterwards, for experiments with curl.
    #[arg(long)]
    pub serve: bool,
}

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The Service name of the webhook.
    #[arg(long)]
    pub service: String,
    /// The Service's namespace.
    #[arg(long)]
    pub namespace: String,
    /// Where to write ca.crt, tls.crt and tls.key.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
    /// How long the CA and the serving certificate are valid, from now
    /// (e.g. 90d, 1y; at most 3650d). Rotate before they expire.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub validity: std::time::Duration,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file (YAML, see the README).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ChecksumArgs {
    /// The git repository (bare or with a working tree; only its objects are read).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The overlay directory, relative to the repository root.
    #[arg(long)]
    pub overlay: String,
    /// The revision to read (a branch, tag, commit id, `HEAD~2`...).
    #[arg(long, default_value = "HEAD")]
    pub rev: String,
    /// Also print the closure: every entry the checksum covers, one a line.
    #[arg(long)]
    pub list: bool,
    /// Print a JSON object (checksum, full revision, entries) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sizes: SizeArgs,
}

/// The checksum's size limits, as the webhook's `limits` sets them: give
/// the same values as the server's configuration.
#[derive(Debug, clap::Args)]
pub struct SizeArgs {
    /// Largest file or symlink target an overlay's closure may hold, in
    /// bytes (`limits.maxBlobBytes`); a bigger one fails the check.
    #[arg(long, default_value_t = crate::checksum::DEFAULT_MAX_BLOB_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_MAX_BLOB_BYTES))]
    pub max_blob_bytes: u64,
    /// Largest kustomization or plugin config parsed, in bytes
    /// (`limits.maxKustomizationBytes`).
    #[arg(long, default_value_t = crate::checksum::DEFAULT_MAX_KUSTOMIZATION_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=crate::kustomize::MAX_YAML_BYTES as u64))]
    pub max_kustomization_bytes: u64,
}

impl SizeArgs {
    pub fn limits(&self) -> crate::checksum::SizeLimits {
        crate::checksum::SizeLimits {
            max_blob_bytes: self.max_blob_bytes,
            max_kustomization_bytes: self.max_kustomization_bytes,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StampArgs {
    /// The git repository (bare or with a working tree).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The overlay directory the manifests were rendered from, relative to the repository root.
    #[arg(long)]
    pub overlay: String,
    /// The revision the manifests were rendered from (a branch, tag, commit id...).
    #[arg(long, default_value = "HEAD")]
    pub rev: String,
    /// Stamp even when files the overlay reads differ in the working tree (warns).
    #[arg(long)]
    pub allow_dirty: bool,
    /// The revision annotation key.
    #[arg(long, default_value = crate::stamp::DEFAULT_REVISION_KEY)]
    pub revision_key: String,
    /// The checksum annotation key.
    #[arg(long, default_value = crate::stamp::DEFAULT_CHECKSUM_KEY)]
    pub checksum_key: String,
    #[command(flatten)]
    pub sizes: SizeArgs,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The git repository (bare or with a working tree; only its objects are read).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The overlay directory, relative to the repository root.
    #[arg(long)]
    pub overlay: String,
    /// The head to verify against.
    #[arg(long, default_value = "HEAD")]
    pub rev: String,
    /// The revision annotation key.
    #[arg(long, default_value = crate::stamp::DEFAULT_REVISION_KEY)]
    pub revision_key: String,
    /// The checksum annotation key.
    #[arg(long, default_value = crate::stamp::DEFAULT_CHECKSUM_KEY)]
    pub checksum_key: String,
    /// The rendered, stamped manifests (`-` for stdin).
    pub file: PathBuf,
    /// Compare each object with the overlay's rendering at --rev (what
    /// `content: verify` does in the webhook) instead of checking the
    /// annotations.
    #[arg(long)]
    pub content: bool,
    /// With --content: the render command, split on spaces; the overlay
    /// directory is appended.
    #[arg(long, default_value = "kustomize build")]
    pub render_command: String,
    /// With --content: an argument for the render command (repeatable),
    /// e.g. --render-arg=--enable-helm.
    #[arg(long = "render-arg", allow_hyphen_values = true)]
    pub render_args: Vec<String>,
    /// With --content: how long the render command may run.
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration)]
    pub render_timeout: std::time::Duration,
    #[command(flatten)]
    pub sizes: SizeArgs,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl ToString) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }
    fn failed(message: impl ToString) -> Self {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo(&args),
        Command::Certs(args) => certs(&args),
        Command::Serve(args) => serve(&args),
        Command::Checksum(args) => checksum(&args),
        Command::Stamp(args) => stamp(&args),
        Command::Verify(args) => verify(&args),
        Command::Scan(args) => scan(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("starting the runtime: {e}")))
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let config = crate::config::Config::load(&args.config).map_err(Failure::usage)?;
    init_logging();
    runtime()?
        .block_on(crate::server::run(config))
        .map_err(|e| Failure::failed(format!("{e:#}")))
}

fn certs(args: &CertsArgs) -> Result<(), Failure> {
    let bundle = crate::certs::write(
        &args.service,
        &args.namespace,
        &args.out,
        args.force,
        args.validity,
    )
    .map_err(|e| match e {
        crate::certs::CertsError::Exists(_) | crate::certs::CertsError::Validity(_) => {
            Failure::usage(e)
        }
        _ => Failure::failed(e),
    })?;
    let expires = std::time::SystemTime::now() + args.validity;
    eprintln!(
        "wrote {}/{{ca.crt,tls.crt,tls.key}} for {}.{}.svc, valid until {} (rotate before: certs/README.md); the caBundle:",
        args.out.display(),
        args.service,
        args.namespace,
        humantime::format_rfc3339_seconds(expires)
    );
    println!("{bundle}");
    Ok(())
}

fn demo(args: &DemoArgs) -> Result<(), Failure> {
    let outcome = runtime()?
        .block_on(crate::demo::run(args.serve))
        .map_err(|e| Failure::failed(format!("demo: {e:#}")))?;
    if outcome.as_expected {
        Ok(())
    } else {
        Err(Failure::failed("demo: a verdict was not the expected one"))
    }
}

/// JSON lines on stdout; `RUST_LOG` overrides the default `info` level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .try_init();
}

fn checksum(args: &ChecksumArgs) -> Result<(), Failure> {
    let engine = ChecksumEngine::open(&args.repo)
        .map_err(Failure::usage)?
        .with_size_limits(args.sizes.limits());
    let commit = engine.resolve_commit(&args.rev).map_err(Failure::usage)?;
    let sum = engine
        .checksum(commit, &args.overlay)
        .map_err(|e| match e {
            ChecksumError::InvalidOverlayPath(_) => Failure::usage(e),
            ChecksumError::Overlay(_) | ChecksumError::Git(_) => Failure::failed(e),
        })?;
    let mut out = Vec::new();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &checksum_json(&sum)).map_err(Failure::failed)?;
        out.push(b'\n');
    } else {
        writeln!(out, "{}", sum.checksum).map_err(Failure::failed)?;
        if args.list {
            for entry in &sum.entries {
                out.extend_from_slice(&quote_name(&entry.name()));
                out.push(b'\n');
            }
        }
    }
    std::io::stdout()
        .lock()
        .write_all(&out)
        .map_err(|e| Failure::failed(format!("writing output: {e}")))
}

impl From<crate::stamp::StampError> for Failure {
    fn from(e: crate::stamp::StampError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

fn read_input(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let (name, read) = if path.as_os_str() == "-" {
        (
            "stdin".to_owned(),
            std::io::stdin().lock().read_to_end(&mut bytes),
        )
    } else {
        (
            path.display().to_string(),
            std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)),
        )
    };
    read.map_err(|e| Failure::usage(format!("reading {name}: {e}")))?;
    String::from_utf8(bytes).map_err(|_| Failure::usage(format!("{name} is not UTF-8")))
}

fn stamp(args: &StampArgs) -> Result<(), Failure> {
    let keys = crate::stamp::Keys::new(&args.revision_key, &args.checksum_key)?;
    let input = read_input(std::path::Path::new("-"))?;
    let stamped = crate::stamp::stamp(
        &crate::stamp::StampOptions {
            repo: &args.repo,
            overlay: &args.overlay,
            rev: &args.rev,
            allow_dirty: args.allow_dirty,
            keys,
            limits: args.sizes.limits(),
        },
        &input,
    )?;
    if !stamped.dirty.is_empty() {
        eprintln!(
            "warning: --allow-dirty: the working tree differs from {} under the overlay: {}",
            stamped.revision,
            stamped.dirty.join(", ")
        );
    }
    std::io::stdout()
        .lock()
        .write_all(stamped.output.as_bytes())
        .map_err(|e| Failure::failed(format!("writing output: {e}")))?;
    eprintln!(
        "stamped {} objects: revision {}, checksum {}",
        stamped.objects, stamped.revision, stamped.checksum
    );
    Ok(())
}

fn verify(args: &VerifyArgs) -> Result<(), Failure> {
    let keys = crate::stamp::Keys::new(&args.revision_key, &args.checksum_key)?;
    let input = read_input(&args.file)?;
    let v = if args.content {
        let command: Vec<String> = args
            .render_command
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if command.is_empty() {
            return Err(Failure::usage("--render-command: must name a program"));
        }
        let settings = crate::config::RenderConfig {
            command,
            args: args.render_args.clone(),
            timeout: args.render_timeout,
            concurrency: 1,
            ..crate::config::RenderConfig::default()
        }
        .settings();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::failed(format!("starting the runtime: {e}")))?;
        runtime.block_on(crate::stamp::verify_content(
            &args.repo,
            &args.overlay,
            &args.rev,
            args.sizes.limits(),
            settings,
            &input,
        ))?
    } else {
        crate::stamp::verify(
            &args.repo,
            &args.overlay,
            &args.rev,
            &keys,
            args.sizes.limits(),
            &input,
        )?
    };
    std::io::stdout()
        .lock()
        .write_all(v.report().as_bytes())
        .map_err(|e| Failure::failed(format!("writing output: {e}")))?;
    if v.passed() {
        Ok(())
    } else if v.objects.is_empty() {
        Err(Failure::failed("verify: the input holds no objects"))
    } else {
        let failed = v.objects.iter().filter(|o| o.failure.is_some()).count();
        Err(Failure::failed(format!(
            "verify: {failed} of {} objects would be denied by the webhook at {}",
            v.objects.len(),
            args.rev
        )))
    }
}

fn scan(args: &ScanArgs) -> Result<(), Failure> {
    let config = crate::config::Config::load(&args.config).map_err(Failure::usage)?;
    // Logs (fetches, warnings) go to stderr: stdout is the report.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .try_init();
    let options = crate::scan::ScanOptions {
        kubeconfig: args.kubeconfig.clone(),
        contexts: args.context.clone(),
        all_contexts: args.all_contexts,
        max_age: args.max_age.clone(),
        mirror_dir: args.mirror_dir.clone(),
    };
    let report = runtime()?
        .block_on(crate::scan::run(config, &options))
        .map_err(Failure::usage)?;
    let text = crate::scan::output::render(&report, args.output).map_err(Failure::failed)?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| Failure::failed(format!("writing output: {e}")))?;
    if let Some(path) = &args.prometheus_file {
        crate::scan::output::write_atomically(path, &crate::scan::output::prometheus(&report))
            .map_err(|e| Failure::usage(format!("--prometheus-file: {e}")))?;
    }
    let (stale, errors) = report.counts();
    match report.exit_code() {
        0 => Ok(()),
        code => Err(Failure {
            code,
            message: format!(
                "scan: {stale} stale beyond --max-age, {errors} errors (see the report)"
            ),
        }),
    }
}

/// Whether to colour a stream: only a terminal, and not when `NO_COLOR` is
/// set to a non-empty value (<https://no-color.org>). Escape codes in a
/// CronJob's log or a file are noise.
fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn checksum_json(sum: &OverlayChecksum) -> serde_json::Value {
    let entries: Vec<_> = sum
        .entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": String::from_utf8_lossy(&e.name()),
                "kind": e.kind.as_str(),
                "target": String::from_utf8_lossy(&e.target),
                "sha256": hex::encode(e.digest),
            })
        })
        .collect();
    serde_json::json!({
        "version": 1,
        "checksum": sum.checksum.to_string(),
        "revision": sum.commit.to_string(),
        "overlay": sum.overlay,
        "entries": entries,
    })
}

/// Writes a name as git does: C-quoted in double quotes when it holds a
/// double quote, a backslash, a control character or bytes that are not
/// UTF-8; as is otherwise.
pub fn quote_name(name: &[u8]) -> Vec<u8> {
    let needs = std::str::from_utf8(name).is_err()
        || name
            .iter()
            .any(|&b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f);
    if !needs {
        return name.to_vec();
    }
    let mut out = vec![b'"'];
    let mut rest = name;
    while !rest.is_empty() {
        // Keep valid UTF-8 sequences of non-ASCII characters as they are.
        let valid = match std::str::from_utf8(rest) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let (ok, tail) = rest.split_at(valid);
        for &b in ok {
            quote_byte(&mut out, b);
        }
        if let Some((&bad, after)) = tail.split_first() {
            out.extend_from_slice(format!("\\{bad:03o}").as_bytes());
            rest = after;
        } else {
            rest = tail;
        }
    }
    out.push(b'"');
    out
}

fn quote_byte(out: &mut Vec<u8>, b: u8) {
    let escaped: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\t' => b"\\t",
        b'\r' => b"\\r",
        0x07 => b"\\a",
        0x08 => b"\\b",
        0x0b => b"\\v",
        0x0c => b"\\f",
        b if b < 0x20 || b == 0x7f => {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
            return;
        }
        _ => {
            out.push(b);
            return;
        }
    };
    out.extend_from_slice(escaped);
}

#[cfg(test)]
mod tests {
    use super::{colour, quote_name};
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }

    #[test]
    fn names_are_quoted_like_git() {
        assert_eq!(quote_name(b"file:a/b.yaml"), b"file:a/b.yaml");
        assert_eq!(
            quote_name("file:ü.yaml".as_bytes()),
            "file:ü.yaml".as_bytes()
        );
        assert_eq!(quote_name(b"file:a\nb"), b"\"file:a\\nb\"");
        assert_eq!(quote_name(b"file:a\"b\\c"), b"\"file:a\\\"b\\\\c\"");
        assert_eq!(quote_name(b"file:\x01\xff"), b"\"file:\\001\\377\"");
    }
}
