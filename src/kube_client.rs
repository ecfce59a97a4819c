//! `kube:` in the configuration: how the server reaches the Kubernetes API
//! (for the replicas' shared heads, `heads`). A kubeconfig file and
//! context, or, without one, the in-cluster configuration.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeConfig {
    /// A kubeconfig file; absent: the in-cluster configuration (service
    /// account token and `KUBERNETES_SERVICE_HOST`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context; absent: its current-context.
    #[serde(default)]
    pub context: Option<String>,
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
