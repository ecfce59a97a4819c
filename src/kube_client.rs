//! `kube:` in the configuration: how the server reaches the Kubernetes API
//! (for the replicas' shared heads, `heads`, and the controller objects of
//! `provenance: flux|argo`). A kubeconfig file and context, or, without
//! one, the in-cluster configuration.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// See [`KubeConfig::controller_wait`].
pub const DEFAULT_CONTROLLER_WAIT: Duration = Duration::from_secs(2);

fn default_controller_wait() -> Duration {
    DEFAULT_CONTROLLER_WAIT
}

/// See [`KubeConfig::unready_after`].
pub const DEFAULT_UNREADY_AFTER: Duration = Duration::from_secs(10);

fn default_unready_after() -> Duration {
    DEFAULT_UNREADY_AFTER
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeConfig {
    /// A kubeconfig file; absent: the in-cluster configuration (service
    /// account token and `KUBERNETES_SERVICE_HOST`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context; absent: its current-context.
    #[serde(default)]
    pub context: Option<String>,
    /// `provenance: flux|argo`: how long a review waits, within its
    /// deadline, for the watch to deliver the controller object's new
    /// revision when the cached one is not the branch head (Flux writes
    /// `lastAttemptedRevision` before it applies, but the watch event can
    /// arrive after the apply's review).
    #[serde(default = "default_controller_wait", with = "crate::config::duration")]
    pub controller_wait: Duration,
    /// `provenance: flux|argo`: how long a controller watch may stay
    /// broken before `/readyz` fails. Reviews are decided from the cached
    /// objects meanwhile; shorter blips (an API server rollout) do not
    /// flap readiness.
    #[serde(default = "default_unready_after", with = "crate::config::duration")]
    pub unready_after: Duration,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            kubeconfig: None,
            context: None,
            controller_wait: DEFAULT_CONTROLLER_WAIT,
            unready_after: DEFAULT_UNREADY_AFTER,
        }
    }
}

impl KubeConfig {
    /// A client for the configured cluster. Builds the configuration only:
    /// nothing is sent until the client is used.
    pub async fn client(&self) -> Result<kube::Client, String> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("kube.kubeconfig: reading {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| format!("kube.kubeconfig: {}: {e}", path.display()))?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| format!("kube.context: {e}"))?,
            None => kube::Config::incluster()
                .map_err(|e| format!("not running in a cluster and no kube.kubeconfig: {e}"))?,
        };
        kube::Client::try_from(config).map_err(|e| format!("kube client: {e}"))
    }
}
