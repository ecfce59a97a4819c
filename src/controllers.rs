//! What GitOps controllers say they apply: Flux Kustomizations and
//! GitRepositories ([`crate::flux`]) and Argo CD Applications
//! ([`crate::argo`]), matched to the configured sources ([`sources`]).

pub mod sources;
