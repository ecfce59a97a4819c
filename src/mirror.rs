//! The git mirror: a cached, always-fresh bare copy of each GitOps source.
