//! Waiting for states of the deployment: one active pod, a new active pod, a Service's
//! endpoints, the demo app's applied role, a settled group, settled controller replicas, and
//! a whole failover.

use std::time::{Duration, Instant, SystemTime};

use super::Testbed;
use super::history::Timeline;
use super::http::AppState;
use super::names::{
    ACTIVE, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, APP_SERVICE, CONTROLLER_GROUP,
    CONTROLLER_NAMESPACE, CONTROLLER_REPLICAS,
};
use super::pods::{Trigger, pod_epoch, pod_ip};
use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

impl Testbed {
    /// Waits until exactly one pod of the group is labeled active (terminating pods
    /// included in the count) and returns it.
    pub async fn wait_one_active(&self, ns: &str, group: &str, timeout: Duration) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.group_view(ns, group).await?;
            let active = view.active();
            if active.len() == 1 {
                return Ok(active[0].clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: {} pods of group {ns}/{group} active; pods:\n{}",
                    active.len(),
                    view.table()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a pod other than `old` (by UID) is the only active pod of the group.
    pub async fn wait_new_active(
        &self,
        ns: &str,
        group: &str,
        old_uid: &str,
        timeout: Duration,
    ) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.group_view(ns, group).await?;
            let active = view.active();
            if active.len() == 1 && active[0].uid().as_deref() != Some(old_uid) {
                return Ok(active[0].clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: no new single active pod in {ns}/{group}; pods:\n{}",
                    view.table()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the Service's ready endpoints are exactly `ips`.
    pub async fn wait_endpoints(
        &self,
        ns: &str,
        service: &str,
        ips: &[&str],
        timeout: Duration,
    ) -> Result<()> {
        let want: Vec<String> = {
            let mut v: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.service_endpoints(ns, service).await?;
            if got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: Service {ns}/{service} endpoints are {got:?}, want {want:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the pod's demo app reports it applied `role` (and, for active, the
    /// pod's epoch annotation).
    pub async fn wait_app_role(
        &self,
        ns: &str,
        name: &str,
        role: &str,
        timeout: Duration,
    ) -> Result<AppState> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.pod(ns, name).await? {
                None => bail!("pod {ns}/{name} is gone while waiting for its app to be {role}"),
                Some(pod) => {
                    let epoch = pod_epoch(&pod);
                    match self.app_state(&pod).await {
                        Ok(state) => {
                            let epoch_ok =
                                role != ACTIVE || (epoch.is_some() && state.epoch == epoch);
                            if state.role.as_deref() == Some(role) && epoch_ok {
                                return Ok(state);
                            }
                            last = format!("state {state:?}, pod epoch annotation {epoch:?}");
                        }
                        Err(e) => last = format!("{e:#}"),
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("timeout after {timeout:?}: app of {ns}/{name} is not {role}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the steady state of a group: `replicas` pods, none terminating, all Ready,
    /// exactly one active (with an epoch annotation), the others standby, the Service's ready
    /// endpoints exactly the active pod (when the group is the sample app), and the active
    /// app's `/state` showing role active with the pod's epoch.
    pub async fn wait_settled(
        &self,
        ns: &str,
        group: &str,
        replicas: usize,
        timeout: Duration,
    ) -> Result<Settled> {
        let deadline = Instant::now() + timeout;
        let mut why;
        loop {
            let view = self.group_view(ns, group).await?;
            why = view.settled_problem(replicas);
            if why.is_none() {
                let active = view.active()[0].clone();
                let standbys: Vec<Pod> = view
                    .live()
                    .into_iter()
                    .filter(|p| p.uid() != active.uid())
                    .cloned()
                    .collect();
                let ip = pod_ip(&active).unwrap_or_default();
                let eps = if ns == APP_NAMESPACE && group == APP_GROUP {
                    Some(self.service_endpoints(ns, APP_SERVICE).await?)
                } else {
                    None
                };
                match eps {
                    Some(eps) if eps != vec![ip.clone()] => {
                        why = Some(format!("service endpoints {eps:?}, active IP {ip}"))
                    }
                    _ => {
                        if ns == APP_NAMESPACE {
                            let epoch = pod_epoch(&active);
                            match self.app_state(&active).await {
                                Ok(s) if s.role.as_deref() == Some(ACTIVE) && s.epoch == epoch => {
                                    return Ok(Settled {
                                        active,
                                        standbys,
                                        app_state: Some(s),
                                    });
                                }
                                Ok(s) => {
                                    why = Some(format!(
                                        "active app state {s:?}, epoch annotation {epoch:?}"
                                    ))
                                }
                                Err(e) => why = Some(format!("active app /state: {e:#}")),
                            }
                        } else {
                            return Ok(Settled {
                                active,
                                standbys,
                                app_state: None,
                            });
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                let view = self.group_view(ns, group).await?;
                bail!(
                    "timeout after {timeout:?}: group {ns}/{group} not settled: {}\n{}",
                    why.unwrap_or_default(),
                    view.table()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Steady state of the controller replicas: both Ready, exactly one labeled active, and
    /// it holds the Lease.
    pub async fn wait_controllers_settled(&self, timeout: Duration) -> Result<Settled> {
        let deadline = Instant::now() + timeout;
        loop {
            let settled = self
                .wait_settled(
                    CONTROLLER_NAMESPACE,
                    CONTROLLER_GROUP,
                    CONTROLLER_REPLICAS,
                    deadline.saturating_duration_since(Instant::now()),
                )
                .await?;
            let holder = self.lease_holder().await?;
            if holder.as_deref() == Some(settled.active.name_any().as_str()) {
                return Ok(settled);
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: active controller pod {} but Lease holder {holder:?}",
                    settled.active.name_any()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The acting controller replica: the pod labeled active.
    pub async fn active_controller(&self, timeout: Duration) -> Result<Pod> {
        self.wait_one_active(CONTROLLER_NAMESPACE, CONTROLLER_GROUP, timeout)
            .await
    }

    /// After a trigger on the active app pod `old` at `t_trigger`: waits until another pod is
    /// the only active one, the Service's EndpointSlice lists only it and its app applied the
    /// notification; returns the new active, its app state and the timeline.
    pub async fn await_failover(
        &self,
        old: &Pod,
        t_trigger: SystemTime,
        timeout: Duration,
    ) -> Result<(Pod, AppState, Timeline)> {
        let old_uid = old.uid().unwrap_or_default();
        let new = self
            .wait_new_active(APP_NAMESPACE, APP_GROUP, &old_uid, timeout)
            .await?;
        let new_ip = pod_ip(&new).ok_or_else(|| anyhow!("new active has no IP"))?;
        self.wait_endpoints(APP_NAMESPACE, APP_SERVICE, &[&new_ip], timeout)
            .await?;
        let state = self
            .wait_app_role(APP_NAMESPACE, &new.name_any(), ACTIVE, timeout)
            .await?;
        // Let the watch deliver what the API already shows.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let timeline = self.history.timeline(
            t_trigger,
            old,
            &new,
            APP_NAMESPACE,
            APP_SERVICE,
            Some(&state),
        );
        Ok((new, state, timeline))
    }

    /// Runs one failover of the sample app: the group must be settled first; performs
    /// `trigger` on the active pod, waits until another pod is the only active one, the
    /// Service's endpoints moved to it and its app applied the notification; returns the
    /// timeline (from the [`History`]) and the pods involved. Does not wait for the
    /// replacement: call [`Testbed::wait_settled`] afterwards.
    pub async fn failover(&self, trigger: Trigger, timeout: Duration) -> Result<Failover> {
        let before = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await
            .context("group not settled before the failover")?;
        let old = before.active.clone();
        let t_trigger = self.trigger(&old, trigger).await?;
        let (new, state, timeline) = self
            .await_failover(&old, t_trigger, timeout)
            .await
            .with_context(|| format!("no failover after {trigger:?} of {}", old.name_any()))?;
        Ok(Failover {
            trigger,
            old,
            new,
            standby_before: before.standbys,
            app_state: state,
            timeline,
        })
    }
}

/// The result of [`Testbed::failover`].
#[derive(Clone, Debug)]
pub struct Failover {
    pub trigger: Trigger,
    pub old: Pod,
    pub new: Pod,
    pub standby_before: Vec<Pod>,
    pub app_state: AppState,
    pub timeline: Timeline,
}

/// A group's steady state.
#[derive(Clone, Debug)]
pub struct Settled {
    pub active: Pod,
    pub standbys: Vec<Pod>,
    pub app_state: Option<AppState>,
}
