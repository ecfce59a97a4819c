//! Certificates for the webhook (rcgen, no OpenSSL): a CA and a serving
//! certificate signed by it.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use std::time::{Duration, SystemTime};

/// How long `stale-guard certs` certificates are valid by default: a year,
/// then they must be rotated (certs/README.md).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest `--validity` accepted (ten years): a bound, so a forgotten
/// certificate still expires.
pub const MAX_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The shortest `--validity` accepted.
pub const MIN_VALIDITY: Duration = Duration::from_secs(3600);

/// Certificates start this long before now, for clocks (the API server's,
/// a node's) slightly behind this machine's: kubeadm backdates by the same.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// PEM texts of a CA and a serving certificate with its key.
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The names a Service is reached by: `NAME`, `NAME.NS`, `NAME.NS.svc`,
/// `NAME.NS.svc.cluster.local`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A fresh CA and a serving certificate for `names` (DNS names or IP
/// addresses), ECDSA P-256, both valid for [`DEFAULT_VALIDITY`] from now.
pub fn generate(ca_name: &str, names: &[String]) -> Result<Bundle, CertsError> {
    generate_valid_for(ca_name, names, DEFAULT_VALIDITY)
}

/// [`generate`], both certificates valid from [`CLOCK_SKEW`] before now
/// until `validity` after now (between [`MIN_VALIDITY`] and
/// [`MAX_VALIDITY`]). The CA expires with the leaf: rotation replaces both.
pub fn generate_valid_for(
    ca_name: &str,
    names: &[String],
    validity: Duration,
) -> Result<Bundle, CertsError> {
    if !(MIN_VALIDITY..=MAX_VALIDITY).contains(&validity) {
        return Err(CertsError::Validity(format!(
            "{} is outside 1h..3650d",
            humantime::format_duration(validity)
        )));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| CertsError::Validity(format!("the system clock is before 1970: {e}")))?;
    // rcgen's times are `time::OffsetDateTime`; built from the epoch so no
    // direct dependency on `time` is needed. Bounded above, so no overflow.
    let at = |since_epoch: Duration| rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let not_before = at(now.saturating_sub(CLOCK_SKEW));
    let not_after = at(now + validity);

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.not_before = not_before;
    ca.not_after = not_after;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    if let Some(first) = names.first() {
        leaf.distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_pem: issuer.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Why `stale-guard certs` could not write its files.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0} exists; pass --force to replace it")]
    Exists(std::path::PathBuf),
    #[error("{path}: {error}")]
    Io {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("--validity: {0}")]
    Validity(String),
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600), valid for
/// `validity`, for the Service `service` in `namespace` into `out`; returns
/// the base64 caBundle for the ValidatingWebhookConfiguration.
pub fn write(
    service: &str,
    namespace: &str,
    out: &std::path::Path,
    force: bool,
    validity: Duration,
) -> Result<String, CertsError> {
    use base64::Engine as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let files = ["ca.crt", "tls.crt", "tls.key"].map(|f| out.join(f));
    if !force && let Some(existing) = files.iter().find(|p| p.exists()) {
        return Err(CertsError::Exists(existing.clone()));
    }
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |error| CertsError::Io { path, error }
    };
    let bundle = generate_valid_for(
        &format!("{service}.{namespace} webhook CA"),
        &service_names(service, namespace),
        validity,
    )?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    for (path, text, mode) in [
        (&files[0], &bundle.ca_pem, 0o644),
        (&files[1], &bundle.cert_pem, 0o644),
        (&files[2], &bundle.key_pem, 0o600),
    ] {
        // Written under a temporary name, then renamed: a reader never sees
        // half a file, and the key is never world-readable, not even briefly.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bundle.ca_pem.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_cover_every_dns_form() {
        assert_eq!(
            service_names("stale-guard", "stale-guard-system"),
            [
                "stale-guard",
                "stale-guard.stale-guard-system",
                "stale-guard.stale-guard-system.svc",
                "stale-guard.stale-guard-system.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn writes_three_files_keeps_the_key_private_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bundle = write("sg", "ns", dir.path(), false, DEFAULT_VALIDITY).unwrap();
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&bundle)
            .unwrap();
        assert_eq!(decoded, ca.as_bytes());
        let mode = std::fs::metadata(dir.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            write("sg", "ns", dir.path(), false, DEFAULT_VALIDITY),
            Err(CertsError::Exists(_))
        ));
        let again = write("sg", "ns", dir.path(), true, DEFAULT_VALIDITY).unwrap();
        assert_ne!(again, bundle, "--force makes a new CA");
    }

    #[test]
    fn validity_is_bounded() {
        let names = ["localhost".to_owned()];
        for bad in [Duration::ZERO, Duration::from_secs(60), MAX_VALIDITY * 2] {
            assert!(matches!(
                generate_valid_for("ca", &names, bad),
                Err(CertsError::Validity(_))
            ));
        }
        assert!(generate_valid_for("ca", &names, MAX_VALIDITY).is_ok());
    }

    #[test]
    fn generates_pem() {
        let b = generate("test CA", &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(b.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(b.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(b.key_pem.contains("PRIVATE KEY"));
    }
}
