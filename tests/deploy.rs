//! The Kubernetes manifests under `deploy/` (and `certs/cert-manager/`):
//! every kustomization renders with `kubectl kustomize`, every rendered
//! object deserialises into its k8s-openapi type (custom resources are
//! checked as generic YAML), and the objects say what docs/deploy.md
//! promises: the webhook's registration, the Deployment's hardening and
//! zero-downtime rollout, the NetworkPolicy, the certificate paths, and a
//! ConfigMap whose configuration `Config::parse` accepts.
//!
//! `kubectl` is required: without it these tests fail, they do not skip.
//! The self-signed overlay is rendered from a copy of the tree, after
//! `stale-guard certs` has written the files its secretGenerator reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use stale_guard::config::Config;

const NAMESPACE: &str = "stale-guard-system";
const WEBHOOK_SERVICE_SA: [&str; 2] = [
    "system:serviceaccount:flux-system:kustomize-controller",
    "system:serviceaccount:argocd:argocd-application-controller",
];
/// Kinds that are not in k8s-openapi: checked as generic YAML.
const CUSTOM_KINDS: [&str; 4] = ["Certificate", "Issuer", "ServiceMonitor", "PrometheusRule"];
/// The kustomizations that install the whole webhook.
const FULL: [&str; 4] = [
    "deploy/base",
    "deploy/overlays/self-signed",
    "deploy/overlays/cert-manager",
    "deploy/overlays/cert-manager-monitoring",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Rendered {
    /// Relative kustomization directory -> its rendered objects.
    outputs: BTreeMap<String, Vec<Value>>,
    /// What `stale-guard certs` printed, and the ca.crt it wrote.
    printed_ca_bundle: String,
    ca_crt: Vec<u8>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every directory under `dir` holding a kustomization.yaml of kind
/// Kustomization (components cannot be rendered alone), as paths relative to `root`.
fn kustomizations(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let file = dir.join("kustomization.yaml");
    if file.exists()
        && !std::fs::read_to_string(&file)
            .unwrap()
            .contains("kind: Component")
    {
        let rel = dir.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
        out.push(rel);
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            kustomizations(root, &entry.path(), out);
        }
    }
}

fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests need `kubectl` on PATH to render deploy/ (kubectl kustomize): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{}: rendered YAML: {e}", dir.display()));
        if !value.is_null() {
            docs.push(value);
        }
    }
    assert!(!docs.is_empty(), "{} rendered nothing", dir.display());
    docs
}

fn rendered() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // The cert-manager overlay reads ../../../certs/cert-manager: copy both trees.
        copy_dir(&repo().join("deploy"), &root.join("deploy"));
        copy_dir(&repo().join("certs"), &root.join("certs"));
        let certs = root.join("deploy/overlays/self-signed/certs");
        let _ = std::fs::remove_dir_all(&certs);
        let out = Command::new(env!("CARGO_BIN_EXE_stale-guard"))
            .args([
                "certs",
                "--service",
                "stale-guard",
                "--namespace",
                NAMESPACE,
                "--out",
            ])
            .arg(&certs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stale-guard certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed_ca_bundle = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let ca_crt = std::fs::read(certs.join("ca.crt")).unwrap();

        let mut dirs = Vec::new();
        kustomizations(root, &root.join("deploy"), &mut dirs);
        kustomizations(root, &root.join("certs"), &mut dirs);
        let mut outputs = BTreeMap::new();
        for dir in dirs {
            let docs = kustomize(&root.join(&dir));
            outputs.insert(dir, docs);
        }
        Rendered {
            outputs,
            printed_ca_bundle,
            ca_crt,
        }
    })
}

fn docs(dir: &str) -> &'static [Value] {
    rendered()
        .outputs
        .get(dir)
        .unwrap_or_else(|| panic!("no kustomization {dir}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} missing or not a string in {v}"))
}

/// kustomize folds long base64 values over several lines, which the API
/// server's (Go) decoder ignores; k8s-openapi's strict decoder does not.
fn unfold_base64(v: &mut Value) {
    if let Value::String(s) = v {
        s.retain(|c| !c.is_ascii_whitespace());
    }
}

fn typed<T: DeserializeOwned>(mut v: Value) -> T {
    let kind = str_at(&v, "/kind").to_owned();
    match kind.as_str() {
        "Secret" => {
            for key in ["data"] {
                if let Some(Value::Object(map)) = v.get_mut(key) {
                    map.values_mut().for_each(unfold_base64);
                }
            }
        }
        "ValidatingWebhookConfiguration" => {
            if let Some(Value::Array(hooks)) = v.get_mut("webhooks") {
                for hook in hooks {
                    if let Some(b) = hook.pointer_mut("/clientConfig/caBundle") {
                        unfold_base64(b);
                    }
                }
            }
        }
        _ => {}
    }
    let name = v.pointer("/metadata/name").cloned();
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{kind} {name:?}: {e}"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let mut hits = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name);
    let hit = hits
        .next()
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"));
    assert!(hits.next().is_none(), "two {kind} {name}");
    hit
}

fn one<T: DeserializeOwned>(docs: &[Value], kind: &str, name: &str) -> T {
    typed(find(docs, kind, name).clone())
}

#[test]
fn every_kustomization_renders_into_known_typed_objects() {
    let r = rendered();
    for dir in FULL.iter().chain(["certs/cert-manager"].iter()) {
        assert!(r.outputs.contains_key(*dir), "{dir} was not rendered");
    }
    for (dir, docs) in &r.outputs {
        let mut seen = BTreeSet::new();
        for doc in docs {
            let kind = str_at(doc, "/kind");
            let name = str_at(doc, "/metadata/name");
            assert!(!str_at(doc, "/apiVersion").is_empty());
            assert!(
                seen.insert((kind.to_owned(), name.to_owned())),
                "{dir}: {kind} {name} twice"
            );
            let cluster_scoped = matches!(
                kind,
                "Namespace"
                    | "ValidatingWebhookConfiguration"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
            );
            if !cluster_scoped {
                assert_eq!(
                    doc.pointer("/metadata/namespace").and_then(Value::as_str),
                    Some(NAMESPACE),
                    "{dir}: {kind} {name} namespace"
                );
            }
            let d = doc.clone();
            match kind {
                "Namespace" => drop(typed::<Namespace>(d)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(d)),
                "Role" => drop(typed::<Role>(d)),
                "ClusterRole" => drop(typed::<ClusterRole>(d)),
                "RoleBinding" => drop(typed::<RoleBinding>(d)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(d)),
                "ConfigMap" => drop(typed::<ConfigMap>(d)),
                "Secret" => drop(typed::<Secret>(d)),
                "Deployment" => drop(typed::<Deployment>(d)),
                "CronJob" => drop(typed::<CronJob>(d)),
                "Service" => drop(typed::<Service>(d)),
                "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(d)),
                "NetworkPolicy" => drop(typed::<NetworkPolicy>(d)),
                "ValidatingWebhookConfiguration" => {
                    drop(typed::<ValidatingWebhookConfiguration>(d))
                }
                k if CUSTOM_KINDS.contains(&k) => {
                    let api = str_at(doc, "/apiVersion");
                    assert!(
                        api == "cert-manager.io/v1" || api == "monitoring.coreos.com/v1",
                        "{dir}: {kind} {name}: apiVersion {api}"
                    );
                    assert!(doc["spec"].is_object(), "{dir}: {kind} {name} has no spec");
                }
                other => panic!("{dir}: unexpected kind {other} ({name})"),
            }
        }
    }
    for dir in FULL {
        let docs = docs(dir);
        for (kind, name) in [
            ("Namespace", NAMESPACE),
            ("ServiceAccount", "stale-guard"),
            ("ConfigMap", "stale-guard-config"),
            ("Deployment", "stale-guard"),
            ("Service", "stale-guard"),
            ("PodDisruptionBudget", "stale-guard"),
            ("NetworkPolicy", "stale-guard"),
            ("ValidatingWebhookConfiguration", "stale-guard"),
        ] {
            find(docs, kind, name);
        }
        // The server makes no API calls: no RBAC is granted, no token mounted.
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap();
            assert!(
                !kind.starts_with("Role") && !kind.starts_with("ClusterRole"),
                "{dir}: unexpected RBAC object {kind}"
            );
        }
        let sa: ServiceAccount = one(docs, "ServiceAccount", "stale-guard");
        assert_eq!(sa.automount_service_account_token, Some(false));
    }
}

#[test]
fn webhook_registration() {
    for dir in FULL {
        let vwc: ValidatingWebhookConfiguration =
            one(docs(dir), "ValidatingWebhookConfiguration", "stale-guard");
        let hooks = vwc.webhooks.expect("webhooks");
        assert_eq!(hooks.len(), 1, "{dir}");
        let h = &hooks[0];
        assert_eq!(h.admission_review_versions, vec!["v1".to_owned()]);
        assert_eq!(h.side_effects, "None");
        assert_eq!(h.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(h.timeout_seconds, Some(5));
        assert_eq!(h.match_policy.as_deref(), Some("Equivalent"));
        let svc = h
            .client_config
            .service
            .as_ref()
            .expect("clientConfig.service");
        assert_eq!(svc.name, "stale-guard");
        assert_eq!(svc.namespace, NAMESPACE);
        assert_eq!(svc.path.as_deref(), Some("/validate"));
        assert_eq!(svc.port, Some(443));
        assert!(h.client_config.url.is_none());

        let ns = h.namespace_selector.as_ref().expect("namespaceSelector");
        let exprs = ns.match_expressions.as_ref().expect("matchExpressions");
        assert!(
            exprs.iter().any(|e| e.key == "kubernetes.io/metadata.name"
                && e.operator == "NotIn"
                && e.values.as_ref().is_some_and(|v| {
                    v.contains(&"kube-system".to_owned()) && v.contains(&NAMESPACE.to_owned())
                })),
            "{dir}: namespaceSelector {exprs:?}"
        );

        let rules = h.rules.as_ref().expect("rules");
        assert_eq!(rules.len(), 1);
        let rule = &rules[0];
        let star = Some(vec!["*".to_owned()]);
        assert_eq!(
            rule.operations,
            Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()])
        );
        assert_eq!(rule.api_groups, star);
        assert_eq!(rule.api_versions, star);
        // "*" and not "*/*": subresources (status, scale) are never sent.
        assert_eq!(rule.resources, star);
        assert_eq!(rule.scope.as_deref(), Some("*"));

        let conds = h.match_conditions.as_ref().expect("matchConditions");
        assert!(!conds.is_empty());
        let expr = &conds[0].expression;
        assert!(expr.contains("request.userInfo.username in ["), "{expr}");
        for sa in WEBHOOK_SERVICE_SA {
            assert!(
                expr.contains(&format!("'{sa}'")),
                "{dir}: {expr} lacks {sa}"
            );
        }
    }
}

#[test]
fn self_signed_overlay_carries_the_certs_output() {
    let r = rendered();
    let docs = docs("deploy/overlays/self-signed");
    let vwc: ValidatingWebhookConfiguration =
        one(docs, "ValidatingWebhookConfiguration", "stale-guard");
    let bundle = vwc.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("caBundle");
    assert_eq!(bundle.0, r.ca_crt, "caBundle is not certs/ca.crt");
    let printed = base64::engine::general_purpose::STANDARD
        .decode(&r.printed_ca_bundle)
        .expect("printed caBundle is base64");
    assert_eq!(
        bundle.0, printed,
        "caBundle differs from what `certs` printed"
    );

    let secret: Secret = one(docs, "Secret", "stale-guard-tls");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.expect("data");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(!data[key].0.is_empty(), "{key}");
    }
    assert!(String::from_utf8_lossy(&data["tls.key"].0).contains("PRIVATE KEY"));

    // The base alone carries no caBundle, and no placeholder leaks anywhere.
    let base: ValidatingWebhookConfiguration = one(
        self::docs("deploy/base"),
        "ValidatingWebhookConfiguration",
        "stale-guard",
    );
    assert!(base.webhooks.unwrap()[0].client_config.ca_bundle.is_none());
}

#[test]
fn cert_manager_overlay_injects_the_ca_and_chains_the_issuers() {
    for dir in [
        "deploy/overlays/cert-manager",
        "deploy/overlays/cert-manager-monitoring",
    ] {
        let docs = docs(dir);
        let vwc: ValidatingWebhookConfiguration =
            one(docs, "ValidatingWebhookConfiguration", "stale-guard");
        let ann = vwc.metadata.annotations.expect("annotations");
        assert_eq!(
            ann["cert-manager.io/inject-ca-from"],
            format!("{NAMESPACE}/stale-guard-serving")
        );
        assert!(vwc.webhooks.unwrap()[0].client_config.ca_bundle.is_none());
        // cert-manager makes the Secret; the overlay must not.
        assert!(!docs.iter().any(|d| d["kind"] == "Secret"), "{dir}");
        check_cert_manager_chain(docs);
    }
    // The same objects applied alone.
    check_cert_manager_chain(docs("certs/cert-manager"));
}

fn check_cert_manager_chain(docs: &[Value]) {
    let serving = find(docs, "Certificate", "stale-guard-serving");
    assert_eq!(str_at(serving, "/spec/secretName"), "stale-guard-tls");
    assert_eq!(str_at(serving, "/spec/duration"), "2160h");
    assert_eq!(str_at(serving, "/spec/renewBefore"), "360h");
    let names: Vec<&str> = serving["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in [
        "stale-guard",
        "stale-guard.stale-guard-system",
        "stale-guard.stale-guard-system.svc",
        "stale-guard.stale-guard-system.svc.cluster.local",
    ] {
        assert!(names.contains(&name), "dnsNames lack {name}");
    }
    // serving Certificate -> CA Issuer -> CA Certificate -> self-signed Issuer.
    let ca_issuer = find(docs, "Issuer", str_at(serving, "/spec/issuerRef/name"));
    let ca_secret = str_at(ca_issuer, "/spec/ca/secretName");
    let ca_cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == ca_secret)
        .expect("a Certificate writes the CA Issuer's secret");
    assert_eq!(ca_cert["spec"]["isCA"], true);
    assert_eq!(str_at(ca_cert, "/spec/duration"), "87600h");
    assert!(ca_cert["spec"]["renewBefore"].is_string());
    let root = find(docs, "Issuer", str_at(ca_cert, "/spec/issuerRef/name"));
    assert!(root["spec"]["selfSigned"].is_object());
}

#[test]
fn deployment_is_hardened_and_rolls_without_gaps() {
    for dir in FULL {
        let docs = docs(dir);
        let dep: Deployment = one(docs, "Deployment", "stale-guard");
        let spec = dep.spec.expect("spec");
        assert_eq!(spec.replicas, Some(2), "{dir}");
        let ru = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("rollingUpdate");
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        let labels = spec.selector.match_labels.clone().expect("matchLabels");

        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        for (k, v) in &labels {
            assert_eq!(template_labels.get(k), Some(v));
        }
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("stale-guard"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(psc.run_as_user.is_some_and(|u| u > 0));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );

        let tsc = pod
            .topology_spread_constraints
            .as_ref()
            .expect("topologySpreadConstraints");
        assert!(
            tsc.iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname")
        );
        let anti = pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .expect("podAntiAffinity");
        let terms = anti
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .expect("preferred anti-affinity");
        assert!(
            terms
                .iter()
                .any(|t| t.pod_affinity_term.topology_key == "kubernetes.io/hostname")
        );

        assert_eq!(pod.containers.len(), 1);
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_deref(),
            Some(&["serve", "--config", "/etc/stale-guard/config.yaml"].map(str::to_owned)[..])
        );
        let port = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.container_port == 8443);
        let port_name = port.and_then(|p| p.name.clone()).expect("named port 8443");
        let csc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(csc.run_as_non_root, Some(true));
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(
            csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            csc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );

        // Probes go to the plain-HTTP probe port, not the review port:
        // clients filling the review port's slots must not fail them.
        let probe_port = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("probes"))
            .expect("a container port named probes")
            .container_port;
        assert_ne!(probe_port, 8443);
        for (probe, path) in [
            (
                c.readiness_probe.as_ref().expect("readinessProbe"),
                "/readyz",
            ),
            (
                c.liveness_probe.as_ref().expect("livenessProbe"),
                "/healthz",
            ),
        ] {
            let get = probe.http_get.as_ref().expect("httpGet probe");
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.scheme.as_deref(), Some("HTTP"));
            assert!(
                get.port == IntOrString::Int(probe_port)
                    || get.port == IntOrString::String("probes".into()),
                "{path} probe port {:?}",
                get.port
            );
        }
        let pre_stop = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .expect("preStop");
        let sleep_seconds = match (&pre_stop.exec, &pre_stop.sleep) {
            (Some(exec), _) => {
                let cmd = exec.command.clone().unwrap();
                assert_eq!(cmd[0], "sleep", "preStop {cmd:?}");
                cmd[1].parse::<i64>().unwrap()
            }
            (None, Some(sleep)) => sleep.seconds,
            _ => panic!("preStop is neither a sleep nor `sleep N`"),
        };

        let res = c.resources.as_ref().expect("resources");
        let limits = res.limits.as_ref().expect("limits");
        let requests = res.requests.as_ref().expect("requests");
        assert_eq!(limits["memory"].0, "128Mi");
        assert!(limits.contains_key("cpu") && requests.contains_key("cpu"));
        assert!(requests.contains_key("memory"));

        // Volumes: the config, TLS and git Secrets as read-only directories
        // (no subPath, so kubelet's ..data swap reaches the server), emptyDirs
        // for the mirror and /tmp.
        let volumes = pod.volumes.clone().expect("volumes");
        let mounts = c.volume_mounts.clone().expect("volumeMounts");
        let mount_of = |pred: &dyn Fn(&k8s_openapi::api::core::v1::Volume) -> bool| {
            let v = volumes.iter().find(|v| pred(v)).expect("volume");
            let m = mounts.iter().find(|m| m.name == v.name).expect("mounted");
            assert!(
                m.sub_path.is_none() && m.sub_path_expr.is_none(),
                "{} subPath",
                m.name
            );
            (v.clone(), m.clone())
        };
        let secret_named = |name: &'static str| {
            move |v: &k8s_openapi::api::core::v1::Volume| {
                v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(name)
            }
        };
        let (_, tls_mount) = mount_of(&secret_named("stale-guard-tls"));
        assert_eq!(tls_mount.read_only, Some(true));
        let (git_vol, git_mount) = mount_of(&secret_named("stale-guard-git"));
        assert_eq!(git_mount.read_only, Some(true));
        assert_eq!(git_vol.secret.unwrap().optional, Some(true));
        let (_, config_mount) = mount_of(&|v| {
            v.config_map.as_ref().map(|c| c.name.as_str()) == Some("stale-guard-config")
        });
        assert_eq!(config_mount.mount_path, "/etc/stale-guard");
        let empty_dirs: Vec<String> = volumes
            .iter()
            .filter(|v| v.empty_dir.is_some())
            .map(|v| {
                mounts
                    .iter()
                    .find(|m| m.name == v.name)
                    .expect("emptyDir mounted")
                    .mount_path
                    .clone()
            })
            .collect();
        assert!(empty_dirs.contains(&"/tmp".to_owned()), "{empty_dirs:?}");

        // The embedded configuration is valid and agrees with the pod.
        let cm: ConfigMap = one(docs, "ConfigMap", "stale-guard-config");
        let text = &cm.data.expect("data")["config.yaml"];
        let config = Config::parse(text).unwrap_or_else(|e| panic!("{dir}: config.yaml: {e}"));
        let mirror = config.mirror_dir.to_str().unwrap().to_owned();
        assert!(
            empty_dirs.contains(&mirror),
            "mirrorDir {mirror} is not an emptyDir"
        );
        for file in [&config.tls.cert_file, &config.tls.key_file] {
            assert_eq!(
                file.parent().unwrap(),
                Path::new(&tls_mount.mount_path),
                "{} is not in the TLS mount",
                file.display()
            );
        }
        for source in &config.sources {
            if let Some(c) = &source.credentials {
                for f in c.files() {
                    assert!(f.starts_with(&git_mount.mount_path), "{}", f.display());
                }
            }
        }
        let listen_port = config.listen_addr().unwrap().port();
        assert_eq!(listen_port, 8443);
        let probes = config.probes_addr().unwrap().expect("probes.listen");
        assert_eq!(i32::from(probes.port()), probe_port);
        let grace = pod
            .termination_grace_period_seconds
            .expect("terminationGracePeriodSeconds");
        assert!(
            (config.shutdown_grace_period.as_secs() as i64) + sleep_seconds < grace,
            "preStop {sleep_seconds}s + shutdownGracePeriod {:?} must fit in {grace}s",
            config.shutdown_grace_period
        );
        let vwc: ValidatingWebhookConfiguration =
            one(docs, "ValidatingWebhookConfiguration", "stale-guard");
        let timeout = vwc.webhooks.unwrap()[0].timeout_seconds.unwrap() as u64;
        assert!(config.failure.decision_timeout.as_secs_f64() < timeout as f64);

        // Service 443 -> the container's 8443, selecting the pods.
        let svc: Service = one(docs, "Service", "stale-guard");
        let sspec = svc.spec.unwrap();
        let sport = &sspec.ports.as_ref().unwrap()[0];
        assert_eq!(sport.port, 443);
        assert!(
            sport.target_port == Some(IntOrString::Int(8443))
                || sport.target_port == Some(IntOrString::String(port_name.clone())),
            "targetPort {:?}",
            sport.target_port
        );
        assert_eq!(sspec.selector.as_ref(), Some(&labels));

        let pdb: PodDisruptionBudget = one(docs, "PodDisruptionBudget", "stale-guard");
        let pspec = pdb.spec.unwrap();
        assert_eq!(pspec.min_available, Some(IntOrString::Int(1)));
        assert_eq!(pspec.selector.unwrap().match_labels.as_ref(), Some(&labels));
    }
}

#[test]
fn network_policy_admits_the_api_server_and_reaches_git() {
    for dir in FULL {
        let np: NetworkPolicy = one(docs(dir), "NetworkPolicy", "stale-guard");
        let spec = np.spec.unwrap();
        let types = spec.policy_types.clone().unwrap();
        assert!(types.contains(&"Ingress".to_owned()) && types.contains(&"Egress".to_owned()));
        let ingress = spec.ingress.unwrap();
        assert!(ingress.iter().any(|rule| {
            rule.from.is_none()
                && rule
                    .ports
                    .as_ref()
                    .is_some_and(|ps| ps.iter().any(|p| p.port == Some(IntOrString::Int(8443))))
        }));
        let egress = spec.egress.unwrap();
        let mut open = BTreeSet::new();
        for rule in &egress {
            for p in rule.ports.iter().flatten() {
                if let Some(IntOrString::Int(n)) = p.port {
                    open.insert((p.protocol.clone().unwrap_or("TCP".into()), n));
                }
            }
        }
        for want in [
            ("UDP", 53),
            ("TCP", 53),
            ("TCP", 443),
            ("TCP", 22),
            ("TCP", 9418),
        ] {
            assert!(
                open.contains(&(want.0.to_owned(), want.1)),
                "egress lacks {want:?}"
            );
        }
    }
}

/// The receiver component, added to the base: the Secret mounted where the
/// (commented) `receiver:` of the shipped config reads it, a Service on the
/// review port, and an Ingress that routes the receiver path only.
#[test]
fn receiver_component_exposes_only_the_receiver_path() {
    let docs = render_with_component("receiver");
    let config = uncommented_config(&docs, "receiver:");
    let receiver = config.receiver.expect("a receiver block to uncomment");

    let deploy: Deployment = one(&docs, "Deployment", "stale-guard");
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == "stale-guard")
        .unwrap();
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "receiver-secret")
        .expect("the receiver Secret mounted");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees a rotation"
    );
    assert!(
        receiver.secret_file.starts_with(&mount.mount_path),
        "{:?} is not under {}",
        receiver.secret_file,
        mount.mount_path
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "receiver-secret")
        .unwrap();
    let secret = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("stale-guard-receiver"));
    // The patch adds to the base's mounts, it does not replace them.
    assert!(
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "tls")
    );

    let svc: Service = one(&docs, "Service", "stale-guard-receiver");
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.target_port, Some(IntOrString::String("https".into())));
    let ingress: Ingress = one(&docs, "Ingress", "stale-guard-receiver");
    let ann = ingress.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get("nginx.ingress.kubernetes.io/backend-protocol")
            .map(String::as_str),
        Some("HTTPS")
    );
    let spec = ingress.spec.unwrap();
    assert!(
        spec.default_backend.is_none(),
        "only the receiver path is routed"
    );
    let paths: Vec<_> = spec
        .rules
        .iter()
        .flatten()
        .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
        .collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(paths[0].path.as_deref(), Some(receiver.path.as_str()));
    assert_eq!(paths[0].path_type, "Exact");
    let backend = paths[0].backend.service.as_ref().unwrap();
    assert_eq!(backend.name, "stale-guard-receiver");
    for doc in &docs {
        assert_eq!(
            doc.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(NAMESPACE),
            NAMESPACE
        );
    }
}

/// The replicas component, added to the base: a Role on Leases only, bound
/// to the server's account, the token mounted, the pod name as identity,
/// and the (commented) `heads:` of the shipped config naming the namespace.
#[test]
fn replicas_component_grants_leases_only() {
    let docs = render_with_component("replicas");
    let config = uncommented_config(&docs, "heads:");
    assert_eq!(config.heads.expect("a heads block").namespace, NAMESPACE);
    let role: Role = one(&docs, "Role", "stale-guard-heads");
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups,
        Some(vec!["coordination.k8s.io".to_owned()])
    );
    assert_eq!(rules[0].resources, Some(vec!["leases".to_owned()]));
    let verbs: BTreeSet<_> = rules[0].verbs.iter().map(String::as_str).collect();
    assert_eq!(
        verbs,
        BTreeSet::from(["get", "list", "watch", "create", "update"])
    );
    let binding: RoleBinding = one(&docs, "RoleBinding", "stale-guard-heads");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", "stale-guard")
    );
    assert_eq!(binding.role_ref.name, "stale-guard-heads");
    let deploy: Deployment = one(&docs, "Deployment", "stale-guard");
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(true));
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == "stale-guard")
        .unwrap();
    let env = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .unwrap();
    let field = env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "metadata.name");
    // The patch adds to the base's environment, it does not replace it.
    assert!(container.env.iter().flatten().any(|e| e.name == "RUST_LOG"));
    find(&docs, "NetworkPolicy", "stale-guard");
    find(&docs, "NetworkPolicy", "stale-guard-kube-api");
}

/// Renders deploy/base with `components/<component>` from a copy of the tree.
fn render_with_component(component: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy"), &tmp.path().join("deploy"));
    let overlay = tmp.path().join("deploy/overlays/component-check");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../base]\ncomponents: [../../components/{component}]\n"),
    )
    .unwrap();
    kustomize(&overlay)
}

/// The shipped config with the commented blocks that start `# <key>`
/// (at any indentation) uncommented, parsed.
fn uncommented_config(docs: &[Value], key: &str) -> Config {
    uncommented_blocks(docs, &[key])
}

fn uncommented_blocks(docs: &[Value], keys: &[&str]) -> Config {
    let cm: ConfigMap = one(docs, "ConfigMap", "stale-guard-config");
    let text = cm.data.unwrap()["config.yaml"].clone();
    let mut uncommented = String::new();
    // The indentation of the block being uncommented.
    let mut block: Option<String> = None;
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        if keys.iter().any(|k| line.trim_start() == format!("# {k}")) {
            block = Some(indent.to_owned());
        } else if block
            .as_ref()
            .is_some_and(|i| !line.starts_with(&format!("{i}#   ")))
        {
            block = None;
        }
        match block
            .as_ref()
            .and_then(|i| line.strip_prefix(&format!("{i}# ")))
        {
            Some(rest) => uncommented.push_str(&format!("{indent}{rest}\n")),
            None => uncommented.push_str(&format!("{line}\n")),
        }
    }
    Config::parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"))
}

/// The flux-provenance and argo-provenance components, added to the base:
/// each a ClusterRole with get/list/watch on its controller's kinds and
/// nothing else (Flux's adds get, only, on ConfigMaps and Secrets, for
/// `postBuild.substituteFrom`), bound to the server's account, the token mounted, and
/// the (commented) rules of the shipped config valid once uncommented.
#[test]
fn provenance_components_grant_reading_the_controller_objects_only() {
    for (component, rule, provenance, grants, get_only) in [
        (
            "flux-provenance",
            "- name: flux-apps",
            stale_guard::policy::Provenance::Flux,
            vec![
                ("kustomize.toolkit.fluxcd.io", "kustomizations"),
                ("source.toolkit.fluxcd.io", "gitrepositories"),
            ],
            vec![("", "configmaps"), ("", "secrets")],
        ),
        (
            "argo-provenance",
            "- name: argo-apps",
            stale_guard::policy::Provenance::Argo,
            vec![("argoproj.io", "applications")],
            vec![],
        ),
    ] {
        let docs = render_with_component(component);
        let name = format!("stale-guard-{component}");
        let role: ClusterRole = one(&docs, "ClusterRole", &name);
        let (mut granted, mut got) = (BTreeSet::new(), BTreeSet::new());
        for r in role.rules.unwrap() {
            let verbs: BTreeSet<_> = r.verbs.iter().map(String::as_str).collect();
            let into = if verbs == BTreeSet::from(["get"]) {
                &mut got
            } else {
                assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{name}");
                &mut granted
            };
            assert!(r.non_resource_urls.is_none() && r.resource_names.is_none());
            for g in r.api_groups.unwrap() {
                for res in r.resources.clone().unwrap() {
                    into.insert((g.clone(), res));
                }
            }
        }
        let set = |pairs: &[(&str, &str)]| -> BTreeSet<_> {
            pairs
                .iter()
                .map(|(g, r)| (g.to_string(), r.to_string()))
                .collect()
        };
        assert_eq!(granted, set(&grants), "{name}");
        assert_eq!(got, set(&get_only), "{name}: get only");
        let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding", &name);
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, name);
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (
                subjects[0].kind.as_str(),
                subjects[0].name.as_str(),
                subjects[0].namespace.as_deref()
            ),
            ("ServiceAccount", "stale-guard", Some(NAMESPACE))
        );
        // No other RBAC comes with it.
        let rbac = docs
            .iter()
            .filter(|d| d["kind"].as_str().unwrap().contains("Role"))
            .count();
        assert_eq!(rbac, 2, "{component}");
        let deploy: Deployment = one(&docs, "Deployment", "stale-guard");
        let pod = deploy.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(true));
        find(&docs, "NetworkPolicy", "stale-guard");

        let config = uncommented_blocks(&docs, &[rule]);
        let r = config
            .rules
            .iter()
            .find(|r| r.provenance == provenance)
            .unwrap_or_else(|| panic!("{component}: no {provenance:?} rule"));
        assert!(r.source.is_empty() && r.overlay.is_empty(), "{component}");
    }
    // Both at once, and with replicas: no object twice.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy"), &tmp.path().join("deploy"));
    let overlay = tmp.path().join("deploy/overlays/component-check");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../base]\ncomponents: [../../components/replicas, ../../components/flux-provenance, ../../components/argo-provenance]\n",
    )
    .unwrap();
    let docs = kustomize(&overlay);
    let mut seen = BTreeSet::new();
    for d in &docs {
        assert!(seen.insert((str_at(d, "/kind"), str_at(d, "/metadata/name"))));
    }
    // The commented argo: and kube: blocks parse too.
    let config = uncommented_blocks(
        &docs,
        &[
            "argo: { namespace: argocd }",
            "kube: { controllerWait: 2s, unreadyAfter: 10s }",
        ],
    );
    assert_eq!(config.argo.namespace, "argocd");
    let kube = config.kube.expect("a kube block");
    assert_eq!(kube.controller_wait, std::time::Duration::from_secs(2));
    assert_eq!(kube.unready_after, std::time::Duration::from_secs(10));
}

#[test]
fn monitoring_objects_watch_the_server_metrics() {
    let docs = docs("deploy/overlays/cert-manager-monitoring");
    let sm = find(docs, "ServiceMonitor", "stale-guard");
    let ep = &sm["spec"]["endpoints"][0];
    // Plain HTTP on the probe port, through a Service of its own.
    assert_eq!(ep["scheme"], "http");
    assert_eq!(ep["path"], "/metrics");
    let svc: Service = one(docs, "Service", "stale-guard-metrics");
    let labels = svc.metadata.labels.clone().unwrap();
    let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in selector {
        assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "{k}");
    }
    // The job label the alerts use (job="stale-guard") comes from a label
    // of the Service, not its name.
    let job_label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        labels.get(job_label).map(String::as_str),
        Some("stale-guard")
    );
    let rule = find(docs, "PrometheusRule", "stale-guard");
    assert!(
        rule.to_string().contains("job=\\\"stale-guard\\\""),
        "{rule}"
    );
    // The webhook's own Service is not scraped.
    let webhook: Service = one(docs, "Service", "stale-guard");
    let webhook_labels = webhook.metadata.labels.unwrap();
    assert!(
        selector
            .iter()
            .any(|(k, v)| webhook_labels.get(k).map(String::as_str) != v.as_str())
    );
    let ports = svc.spec.unwrap().ports.unwrap();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == ep["port"].as_str())
        .expect("the ServiceMonitor's port on stale-guard-metrics");
    assert_eq!(port.target_port, Some(IntOrString::String("probes".into())));
    // And Prometheus may reach it.
    let np: NetworkPolicy = one(docs, "NetworkPolicy", "stale-guard-metrics");
    let open: Vec<IntOrString> = np
        .spec
        .unwrap()
        .ingress
        .unwrap()
        .iter()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| p.port.clone())
        .collect();
    assert!(open.contains(&IntOrString::Int(8080)), "{open:?}");

    let rule = find(docs, "PrometheusRule", "stale-guard");
    let exprs: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            assert!(r["alert"].is_string(), "{r}");
            r["expr"].as_str().unwrap()
        })
        .collect();
    for needle in [
        "stale_guard_mirror_ready == 0",
        "rate(stale_guard_reviews_total{decision=\"deny\"}[5m])",
        "stale_guard_bad_requests_total",
        "rate(stale_guard_review_duration_seconds_bucket[5m])",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "no alert uses {needle}"
        );
    }

    let cm: ConfigMap = one(docs, "ConfigMap", "stale-guard-dashboard");
    let json = &cm.data.unwrap()["dashboard.json"];
    let dash: Value = serde_json::from_str(json).expect("dashboard.json");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        for t in panel["targets"].as_array().unwrap() {
            assert!(t["expr"].as_str().unwrap().contains("stale_guard_"), "{t}");
        }
    }
}

#[test]
fn scan_cronjob_is_read_only_and_runs_scan() {
    let scan = docs("deploy/scan");
    let role: ClusterRole = one(scan, "ClusterRole", "stale-guard-scan");
    let rules = role.rules.unwrap_or_default();
    assert!(!rules.is_empty());
    let mut resources = BTreeSet::new();
    for rule in &rules {
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "the scan's ClusterRole grants {verb}: {rule:?}"
            );
        }
        for group in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                assert!(!r.contains('*') && r != "secrets", "{group}/{r}");
                resources.insert(format!("{group}/{r}"));
            }
        }
    }
    for want in [
        "kustomize.toolkit.fluxcd.io/kustomizations",
        "source.toolkit.fluxcd.io/gitrepositories",
        "argoproj.io/applications",
    ] {
        assert!(
            resources.contains(want),
            "{want} not readable: {resources:?}"
        );
    }
    let binding: ClusterRoleBinding = one(scan, "ClusterRoleBinding", "stale-guard-scan");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "stale-guard-scan");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "stale-guard-scan", Some(NAMESPACE))
    );

    let cron: CronJob = one(scan, "CronJob", "stale-guard-scan");
    let spec = cron.spec.unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("stale-guard-scan")
    );
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "scan", "{args:?}");
    let config_at = args.iter().position(|a| a == "--config").unwrap();
    let config_path = &args[config_at + 1];
    // The config is the webhook's own ConfigMap, mounted where --config reads.
    let mounts = container.volume_mounts.clone().unwrap();
    let mount = mounts
        .iter()
        .find(|m| config_path.starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{config_path} is not mounted"));
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(volume.config_map.unwrap().name, "stale-guard-config");
    let ctx = container.security_context.clone().unwrap();
    assert_eq!(ctx.read_only_root_filesystem, Some(true));
    assert_eq!(ctx.allow_privilege_escalation, Some(false));
    let image = container.image.clone().unwrap();
    let webhook: Deployment = one(docs("deploy/base"), "Deployment", "stale-guard");
    let webhook_image = webhook.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert_eq!(image, webhook_image, "the scan runs the webhook's image");
}

#[test]
fn dockerfile_builds_the_binary_into_a_non_root_git_image() {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        lines[froms[0]].starts_with("FROM rust:"),
        "{}",
        lines[froms[0]]
    );
    let build = lines[froms[0]..froms[1]].join("\n");
    assert!(build.contains("cargo build --release"), "{build}");
    assert!(build.contains("--bin stale-guard"));
    let runtime = &lines[*froms.last().unwrap()..];
    assert!(!runtime[0].contains("rust"), "runtime image {}", runtime[0]);
    let runtime_text = runtime.join("\n");
    for pkg in ["git", "ca-certificates", "openssh-client"] {
        assert!(
            runtime_text.split_whitespace().any(|w| w == pkg),
            "runtime lacks {pkg}"
        );
    }
    assert!(
        runtime_text.contains("COPY --from="),
        "binary copied from the build stage"
    );
    // Content verification renders with kustomize (render.command's default).
    assert!(
        runtime_text.contains("/usr/local/bin/kustomize"),
        "runtime lacks kustomize"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: u32 = user
        .trim()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER (runAsNonRoot needs a number)");
    assert!(uid != 0);
    assert!(runtime_text.contains("ENTRYPOINT [\"/usr/local/bin/stale-guard\"]"));
    // The Deployment runs as the image's user.
    let dep: Deployment = one(docs("deploy/base"), "Deployment", "stale-guard");
    let psc = dep
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .security_context
        .unwrap();
    assert_eq!(psc.run_as_user, Some(uid as i64));
}
