//! Content comparison benchmark: `content::compare` of a Deployment
//! rendering (about 300 lines of YAML: two containers and an init
//! container with 30 environment variables, probes, volume mounts,
//! resources; volumes, affinity, tolerations) with the object the API
//! server admits for it: server-added metadata (`uid`, `resourceVersion`,
//! `managedFields`, ...), defaults on every container, quantities in
//! canonical form (`0.5` kept as `500m`), an injected sidecar and init
//! container (first in their lists, so the index guess fails for every
//! container), webhook annotations and `status`.
//!
//! Benchmarks:
//! - `content/deployment_matches`: the admitted object matches;
//! - `content/deployment_differs`: one environment variable of the last
//!   container differs (the whole object is walked, then the difference is
//!   written out);
//! - `content/review_contains`, `content/review_parsed_and_compared`: the
//!   object read from an AdmissionReview's bytes, unchanged (checked,
//!   nothing built) or changed (built where the rendering sets fields);
//! - `content/review_parse_then_contains` and
//!   `content/review_parse_checking`: the whole review read as the server
//!   reads it, in two passes (the request, then the object checked) or in
//!   one (the object checked while the request is parsed).
//! - `content/review_parse_seen`: the one pass again, the object's `spec`
//!   being the bytes an earlier review was found to contain the rendering
//!   in (`content::Seen`): delimited, not walked (the server's warm path).
//! - `content/sample_review_parse_checking`, `content/sample_review_parse_seen`,
//!   `content/sample_review_parse`: the load benchmark's review
//!   (`data/floor-sample-review.json`, a copy of the floor's 4.5 KB Ingress
//!   review) read in one pass against its own object, walked or seen
//!   before, and read with no rendering to check.
//!
//! Run with `cargo bench --bench content`.

use criterion::Criterion;
use serde_json::{Value, json};
use stale_guard::{admission, content};
use std::hint::black_box;

fn container(name: &str, image: &str, env: usize) -> Value {
    let env: Vec<Value> = (0..env)
        .map(|i| match i % 3 {
            0 => json!({"name": format!("{}_SETTING_{i}", name.to_uppercase()), "value": format!("value-{i}")}),
            1 => json!({"name": format!("{}_SECRET_{i}", name.to_uppercase()),
                "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": format!("key-{i}")}}}),
            _ => json!({"name": format!("{}_POD_{i}", name.to_uppercase()),
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        })
        .collect();
    json!({
        "name": name,
        "image": image,
        "args": ["--config", "/etc/app/config.yaml", "--log-level", "info"],
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
        "env": env,
        "resources": {"requests": {"cpu": 0.5, "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 10},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": true},
            {"name": "cache", "mountPath": "/var/cache/app"},
            {"name": "tls", "mountPath": "/etc/tls", "readOnly": true}
        ],
        "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
    })
}

fn rendering() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "payments",
            "labels": {"app.kubernetes.io/name": "payments", "app.kubernetes.io/part-of": "shop",
                "team": "payments"},
            "annotations": {"stale-guard.io/revision": "3f2a9c0d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39",
                "stale-guard.io/checksum": "sha256:9b1c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c"}
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "payments"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "payments", "team": "payments"}},
                "spec": {
                    "serviceAccountName": "payments",
                    "initContainers": [container("migrate", "registry.example.com/payments:4.2.0", 6)],
                    "containers": [
                        container("api", "registry.example.com/payments:4.2.0", 12),
                        container("worker", "registry.example.com/payments:4.2.0", 12)
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "payments-config"}},
                        {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": "tls", "secret": {"secretName": "payments-tls"}}
                    ],
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "payments"}}}}]}},
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "payments",
                        "effect": "NoSchedule"}],
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "payments"}}}]
                }
            }
        }
    })
}

/// A container as the API server stores it: defaults added, quantities
/// canonical.
fn defaulted(mut c: Value) -> Value {
    c["imagePullPolicy"] = json!("IfNotPresent");
    c["terminationMessagePath"] = json!("/dev/termination-log");
    c["terminationMessagePolicy"] = json!("File");
    c["resources"]["requests"]["cpu"] = json!("500m");
    if let Some(ports) = c["ports"].as_array_mut() {
        for p in ports {
            p["protocol"] = json!("TCP");
        }
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &mut c[probe];
        p["httpGet"]["scheme"] = json!("HTTP");
        p["timeoutSeconds"] = json!(1);
        p["successThreshold"] = json!(1);
        p["failureThreshold"] = json!(3);
    }
    c
}

fn admitted(rendered: &Value) -> Value {
    let mut o = rendered.clone();
    let meta = &mut o["metadata"];
    meta["namespace"] = json!("shop");
    meta["uid"] = json!("5b0c6c9e-7a51-4c77-9c0e-0b7d2f1e8a44");
    meta["resourceVersion"] = json!("88213977");
    meta["generation"] = json!(42);
    meta["creationTimestamp"] = json!("2026-10-01T09:12:44Z");
    meta["annotations"]["deployment.kubernetes.io/revision"] = json!("41");
    meta["managedFields"] = json!([
        {"manager": "kustomize-controller", "operation": "Apply", "apiVersion": "apps/v1",
         "time": "2026-12-05T10:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}, "f:spec": {"f:replicas": {}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
         "time": "2026-12-05T10:00:05Z", "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": {"f:replicas": {}}}}
    ]);
    o["spec"]["revisionHistoryLimit"] = json!(10);
    o["spec"]["progressDeadlineSeconds"] = json!(600);
    let pod = &mut o["spec"]["template"];
    pod["metadata"]["annotations"] = json!({"sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\"]}",
        "kubectl.kubernetes.io/default-container": "api"});
    let spec = &mut pod["spec"];
    for list in ["containers", "initContainers"] {
        let containers: Vec<Value> = spec[list]
            .as_array()
            .into_iter()
            .flatten()
            .cloned()
            .map(defaulted)
            .collect();
        spec[list] = Value::Array(containers);
    }
    let sidecar = defaulted(container(
        "istio-proxy",
        "docker.io/istio/proxyv2:1.24.1",
        9,
    ));
    let init = defaulted(container("istio-init", "docker.io/istio/proxyv2:1.24.1", 3));
    spec["containers"]
        .as_array_mut()
        .into_iter()
        .for_each(|c| c.insert(0, sidecar.clone()));
    spec["initContainers"]
        .as_array_mut()
        .into_iter()
        .for_each(|c| c.insert(0, init.clone()));
    spec["volumes"].as_array_mut().into_iter().for_each(|v| {
        v.push(json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}));
        for vol in v.iter_mut() {
            if vol.get("configMap").is_some() {
                vol["configMap"]["defaultMode"] = json!(420);
            }
        }
    });
    spec["restartPolicy"] = json!("Always");
    spec["dnsPolicy"] = json!("ClusterFirst");
    spec["schedulerName"] = json!("default-scheduler");
    spec["securityContext"] = json!({});
    spec["terminationGracePeriodSeconds"] = json!(30);
    o["status"] = json!({"observedGeneration": 42, "replicas": 3, "readyReplicas": 3,
        "updatedReplicas": 3, "availableReplicas": 3,
        "conditions": [{"type": "Available", "status": "True"}]});
    o
}

fn main() {
    let rendered = rendering();
    let object = admitted(&rendered);
    let lines = serde_yaml_ng::to_string(&rendered).map_or(0, |y| y.lines().count());
    assert_eq!(content::compare(&rendered, &object), Ok(()));
    let mut stale = object.clone();
    stale["spec"]["template"]["spec"]["containers"][2]["env"][6]["value"] = json!("old");
    let difference = content::compare(&rendered, &stale).expect_err("differs");
    println!("rendering: {lines} lines of YAML; the stale object: {difference}");

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("content");
    group.bench_function("deployment_matches", |b| {
        b.iter(|| content::compare(black_box(&rendered), black_box(&object)))
    });
    group.bench_function("deployment_differs", |b| {
        b.iter(|| content::compare(black_box(&rendered), black_box(&stale)))
    });
    // The review path: the object arrives as bytes inside an
    // AdmissionReview. Unchanged objects take the streaming check; the
    // rest are parsed (only where the rendering sets fields) and compared.
    let review = |object: &Value| {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "operation": "UPDATE", "object": object,
                        "oldObject": object}
        }))
        .expect("serialises")
    };
    // The streaming check needs quantities written as the API server
    // writes them ("500m", not 0.5); this rendering does.
    let mut canonical = rendered.clone();
    for list in ["containers", "initContainers"] {
        for c in canonical["spec"]["template"]["spec"][list]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            c["resources"]["requests"]["cpu"] = json!("500m");
        }
    }
    let fresh = review(&admitted(&canonical));
    assert!(content::review_contains(&fresh, &canonical));
    let old = review(&stale);
    assert!(!content::review_contains(&old, &rendered));
    group.bench_function("review_contains", |b| {
        b.iter(|| content::review_contains(black_box(&fresh), black_box(&canonical)))
    });
    // The whole review as the server reads it, in the API server's field
    // order: parsed, then the object checked in a second read; or both
    // in one pass, the object checked while the review is parsed.
    let ordered = |object: &Value| {
        let object = serde_json::to_string(object).expect("serialises");
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"apps","version":"v1","kind":"Deployment"}},"name":"payments","namespace":"shop","operation":"UPDATE","userInfo":{{"username":"flux"}},"object":{object},"oldObject":{object},"dryRun":false}}}}"#
        )
        .into_bytes()
    };
    let fresh_ordered = ordered(&admitted(&canonical));
    /// A rendering, and what objects it was found in (`None`: nothing
    /// kept, every object walked).
    struct Head<'v>(&'v Value, Option<&'v content::Seen>);
    impl admission::Expectation for Head<'_> {
        fn rendered(&self) -> &Value {
            self.0
        }
        fn seen(&self) -> Option<&content::Seen> {
            self.1
        }
    }
    let one_pass = |body: &[u8], seen: Option<&content::Seen>| {
        admission::parse_review_checking(body, |_| Some(Head(&canonical, seen)))
            .map(|(req, pre)| (req.uid.len(), pre.is_some_and(|p| p.contains)))
    };
    assert_eq!(one_pass(&fresh_ordered, None).map(|r| r.1), Ok(true));
    let canonical_seen = content::Seen::new(&canonical);
    assert_eq!(
        one_pass(&fresh_ordered, Some(&canonical_seen)).map(|r| r.1),
        Ok(true)
    );
    group.bench_function("review_parse_then_contains", |b| {
        b.iter(|| {
            let req = admission::parse_review(black_box(&fresh_ordered));
            (
                req.map(|r| r.uid.len()),
                content::review_contains(&fresh_ordered, &canonical),
            )
        })
    });
    group.bench_function("review_parse_checking", |b| {
        b.iter(|| one_pass(black_box(&fresh_ordered), None))
    });
    group.bench_function("review_parse_seen", |b| {
        b.iter(|| one_pass(black_box(&fresh_ordered), Some(&canonical_seen)))
    });
    // The load benchmark's review (the floor's sample: an Ingress with
    // labels, annotations and managedFields, 4.5 KB) against its own
    // object without the fields the API server adds, as
    // benches/webhook-load.sh renders it; and read without a rendering,
    // as the other modes read it.
    let sample: &[u8] = include_bytes!("data/floor-sample-review.json");
    let mut ingress =
        serde_json::from_slice::<Value>(sample).expect("sample review")["request"]["object"]
            .clone();
    for field in [
        "uid",
        "generation",
        "creationTimestamp",
        "managedFields",
        "resourceVersion",
    ] {
        ingress["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove(field);
    }
    ingress.as_object_mut().expect("object").remove("status");
    let sample_pass = |body: &[u8], seen: Option<&content::Seen>| {
        admission::parse_review_checking(body, |_| Some(Head(&ingress, seen)))
            .map(|(req, pre)| (req.uid.len(), pre.is_some_and(|p| p.contains)))
    };
    assert_eq!(sample_pass(sample, None).map(|r| r.1), Ok(true));
    let ingress_seen = content::Seen::new(&ingress);
    assert_eq!(
        sample_pass(sample, Some(&ingress_seen)).map(|r| r.1),
        Ok(true)
    );
    group.bench_function("sample_review_parse_checking", |b| {
        b.iter(|| sample_pass(black_box(sample), None))
    });
    group.bench_function("sample_review_parse_seen", |b| {
        b.iter(|| sample_pass(black_box(sample), Some(&ingress_seen)))
    });
    group.bench_function("sample_review_parse", |b| {
        b.iter(|| admission::parse_review(black_box(sample)).map(|r| r.uid.len()))
    });
    group.bench_function("review_parsed_and_compared", |b| {
        b.iter(|| {
            let seeds = [&rendered];
            let parsed = content::review_object(black_box(&old), &seeds);
            parsed.map(|o| o.map(|o| content::compare(&rendered, &o).is_ok()))
        })
    });
    group.finish();
    criterion.final_summary();
}
