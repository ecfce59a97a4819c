//! A stand-in Kubernetes API server for `stale-guard scan` tests: a real
//! HTTP server (axum on loopback) that answers with recorded API responses
//! (`recorded/*.json`: discovery documents, PartialObjectMetadataLists and
//! full lists of Flux and Argo CD objects, in the shapes a real API server
//! sends), paginated with `metadata.continue` as the API server does, and
//! that records every request it saw.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: String,
    pub accept: String,
    pub authorization: String,
}

impl Seen {
    /// The value of a query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }
}

/// The responses of one fake cluster: (path, continue token) -> JSON body.
#[derive(Default)]
pub struct Recorded {
    responses: HashMap<(String, Option<String>), String>,
}

impl Recorded {
    /// Serves `file` (under `tests/scan_support/recorded/`, with `${NAME}`
    /// placeholders replaced from `vars`) at `path`; `continue_token` is the
    /// `continue` parameter this page answers (None: the first page).
    pub fn serve(
        mut self,
        path: &str,
        continue_token: Option<&str>,
        file: &str,
        vars: &HashMap<String, String>,
    ) -> Self {
        let full = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/scan_support/recorded")
            .join(file);
        let mut text =
            std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
        for (k, v) in vars {
            text = text.replace(&format!("${{{k}}}"), v);
        }
        assert!(
            !text.contains("${"),
            "{file}: a placeholder is left: {text}"
        );
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{file} is not JSON after substitution: {e}"));
        self.responses
            .insert((path.to_owned(), continue_token.map(str::to_owned)), text);
        self
    }
}

/// A running fake API server.
pub struct FakeApiServer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    pub async fn start(recorded: Recorded) -> FakeApiServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new((recorded, Arc::clone(&seen)));
        let app = Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApiServer { url, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<(Recorded, Arc<Mutex<Vec<Seen>>>)>;

async fn answer(State(state): State<Shared>, req: Request) -> Response {
    let header_str = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let seen = Seen {
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or("").to_owned(),
        accept: header_str(header::ACCEPT),
        authorization: header_str(header::AUTHORIZATION),
    };
    let key = (seen.path.clone(), seen.param("continue"));
    state.1.lock().unwrap().push(seen);
    match state.0.responses.get(&key) {
        Some(body) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .unwrap(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#,
        )
            .into_response(),
    }
}

/// A loopback address where nothing listens (connections are refused).
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A kubeconfig with one context per (name, server URL), all with a
/// bearer token, the first one current.
pub fn kubeconfig(clusters: &[(&str, &str)]) -> String {
    let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, url) in clusters {
        y += &format!("- name: {name}\n  cluster:\n    server: {url}\n");
    }
    y += "users:\n- name: scanner\n  user:\n    token: scan-token\ncontexts:\n";
    for (name, _) in clusters {
        y += &format!("- name: {name}\n  context:\n    cluster: {name}\n    user: scanner\n");
    }
    y += &format!("current-context: {}\npreferences: {{}}\n", clusters[0].0);
    y
}
