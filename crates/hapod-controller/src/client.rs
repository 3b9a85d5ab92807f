//! The API client configuration: where to connect, and no retries of its own. A write that
//! passed the leadership fence must either finish within the renew deadline or be given up;
//! kube's default retry of 429/503/504 (with backoff up to minutes, honouring Retry-After)
//! could land it long after another replica took over. The watches and the election have
//! their own retry loops.

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// `--kubeconfig` (a colon-separated list, merged), else in-cluster, else the usual search;
/// with the client's own retries turned off.
pub async fn config(kubeconfig: Option<&str>) -> anyhow::Result<kube::Config> {
    let mut config = located(kubeconfig).await?;
    config.default_retry = false;
    Ok(config)
}

async fn located(kubeconfig: Option<&str>) -> anyhow::Result<kube::Config> {
    let options = KubeConfigOptions::default();
    if let Some(paths) = kubeconfig.filter(|p| !p.is_empty()) {
        let mut merged: Option<Kubeconfig> = None;
        for path in std::env::split_paths(paths) {
            let next = Kubeconfig::read_from(&path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            merged = Some(match merged {
                Some(m) => m.merge(next)?,
                None => next,
            });
        }
        let merged = merged.context("empty --kubeconfig")?;
        return Ok(kube::Config::from_custom_kubeconfig(merged, &options).await?);
    }
    match kube::Config::incluster() {
        Ok(config) => Ok(config),
        Err(_) => Ok(kube::Config::from_kubeconfig(&options)
            .await
            .context("no in-cluster config and no usable kubeconfig")?),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_client_does_not_retry_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n\
             users: [{name: u, user: {token: t}}]\n\
             contexts: [{name: c, context: {cluster: k, user: u}}]\n",
        )
        .unwrap();
        let config = super::config(path.to_str()).await.unwrap();
        assert!(!config.default_retry);
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
    }
}
