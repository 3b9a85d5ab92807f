//! Changing the controller Deployment of `deploy/base` on a running testbed: its flags, and
//! the rollout that follows.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::{CONTROLLER_NAME, CONTROLLER_NAMESPACE, Settled, Testbed};

impl Testbed {
    /// Sets flags of the controller's container (each `--name=value`, replacing any given
    /// with the same `--name`, else appended), then waits for the rollout and for the
    /// replicas to settle.
    pub async fn set_controller_args(&self, flags: &[String], timeout: Duration) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), CONTROLLER_NAMESPACE);
        // The Deployment's own controller updates it too (its status, right after an apply):
        // a conflict is met by reading it again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut deployment = api.get(CONTROLLER_NAME).await?;
            with_flags(&mut deployment, flags)?;
            match api
                .replace(CONTROLLER_NAME, &PostParams::default(), &deployment)
                .await
            {
                Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => continue,
                result => {
                    result.context("updating the controller Deployment's flags")?;
                    break;
                }
            }
        }
        let settled = self.roll_out_controller(timeout).await?;
        for pod in std::iter::once(&settled.active).chain(&settled.standbys) {
            let args = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.first())
                .flat_map(|c| c.args.iter().flatten())
                .collect::<Vec<_>>();
            let missing: Vec<&String> = flags.iter().filter(|f| !args.contains(f)).collect();
            ensure!(
                missing.is_empty(),
                "controller pod {} runs without {missing:?} after the rollout",
                pod.name_any()
            );
        }
        Ok(())
    }

    /// Waits until the controller Deployment's rollout finished and its replicas settled.
    pub async fn roll_out_controller(&self, timeout: Duration) -> Result<Settled> {
        let deployment = format!("deployment/{CONTROLLER_NAME}");
        let rollout_timeout = format!("--timeout={}s", timeout.as_secs());
        tokio::task::block_in_place(|| {
            self.kubectl(&[
                "-n",
                CONTROLLER_NAMESPACE,
                "rollout",
                "status",
                &deployment,
                &rollout_timeout,
            ])
        })
        .context("rolling out the controller")?;
        self.wait_controllers_settled(timeout).await
    }
}

/// `--name` of a `--name=value` flag.
fn flag_name(flag: &str) -> Option<&str> {
    let (name, _) = flag.split_once('=')?;
    (name.starts_with("--") && name.len() > 2).then_some(name)
}

/// Sets `flags` on the controller container of `deployment` (each `--name=value`, replacing
/// any given with the same `--name`, else appended).
fn with_flags(deployment: &mut Deployment, flags: &[String]) -> Result<()> {
    let container = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
        .context("the controller Deployment has no container")?;
    let args = container.args.get_or_insert_with(Vec::new);
    for flag in flags {
        let name = flag_name(flag)
            .with_context(|| format!("controller flag {flag:?} is not --name=value"))?;
        args.retain(|a| flag_name(a) != Some(name));
        args.push(flag.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::flag_name;

    #[test]
    fn names_only_long_flags_with_a_value() {
        assert_eq!(flag_name("--heartbeat-ms=50"), Some("--heartbeat-ms"));
        assert_eq!(flag_name("--a=b=c"), Some("--a"));
        assert_eq!(flag_name("--heartbeat-ms"), None);
        assert_eq!(flag_name("-x=1"), None);
        assert_eq!(flag_name("--=1"), None);
    }
}
