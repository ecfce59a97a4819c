//! stale-guard: a Kubernetes validating admission webhook that blocks stale
//! GitOps applies.
//!
//! The foundation is the overlay checksum ([`checksum`]): a pure function of
//! (commit, overlay path) computed from git objects ([`tree`]) by following
//! what `kustomize build` reads ([`kustomize`]).

pub mod admission;
pub mod argo;
pub mod audit;
pub mod certs;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod content;
pub mod controllers;
pub mod demo;
pub mod echo;
pub mod flux;
pub mod kustomize;
pub mod memory;
pub mod metrics;
pub mod mirror;
pub mod policy;
pub mod render;
pub mod scan;
pub mod server;
pub mod stamp;
pub mod tls;
pub mod tree;
