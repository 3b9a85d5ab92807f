//! Waiting for states of the deployment: one active pod, a new active pod, a Service's
//! endpoints, the demo app's applied role, a settled group, settled controller replicas, and
//! a whole failover.

use std::time::{Duration, SystemTime};

use super::history::Timeline;
use super::http::AppState;
use super::names::{
    ACTIVE, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, APP_SERVICE, CONTROLLER_GROUP,
    CONTROLLER_NAMESPACE, CONTROLLER_REPLICAS, TAKEOVER_PROMOTION_WAIT,
};
use super::pods::{Trigger, pod_epoch, pod_ip};
use super::traffic::ServiceProbe;
use super::{NodeKind, Testbed};
use crate::poll::{Check, await_condition};
use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

impl Testbed {
    /// Waits until exactly one pod of the group is labeled active (terminating pods
    /// included in the count) and returns it.
    pub async fn wait_one_active(&self, ns: &str, group: &str, timeout: Duration) -> Result<Pod> {
        let poll = Duration::from_millis(50);
        self.wait_single_active("one active pod", ns, group, timeout, poll, |_| true)
            .await
    }

    /// Waits until a pod other than `old` (by UID) is the only active pod of the group.
    pub async fn wait_new_active(
        &self,
        ns: &str,
        group: &str,
        old_uid: &str,
        timeout: Duration,
    ) -> Result<Pod> {
        // Polled faster: failover measurements use this wait.
        let poll = Duration::from_millis(20);
        let what = "a new single active pod";
        self.wait_single_active(what, ns, group, timeout, poll, |pod| {
            pod.uid().as_deref() != Some(old_uid)
        })
        .await
    }

    /// Waits (`timeout`, polling every `poll`) until the group has exactly one pod labeled
    /// active and `wanted` accepts it; `what` names that pod in the timeout's error.
    async fn wait_single_active(
        &self,
        what: &str,
        ns: &str,
        group: &str,
        timeout: Duration,
        poll: Duration,
        wanted: impl Fn(&Pod) -> bool,
    ) -> Result<Pod> {
        let wanted = &wanted;
        let what = format!("{what} in group {ns}/{group}");
        await_condition(what, timeout, poll, || async move {
            let view = self.group_view(ns, group).await?;
            Ok(match view.active()[..] {
                [one] if wanted(one) => Check::Done(one.clone()),
                ref active => Check::NotYet(format!(
                    "{} pods active; pods:\n{}",
                    active.len(),
                    view.table()
                )),
            })
        })
        .await
    }

    /// Waits until the Service's ready endpoints are exactly `ips`.
    pub async fn wait_endpoints(
        &self,
        ns: &str,
        service: &str,
        ips: &[&str],
        timeout: Duration,
    ) -> Result<()> {
        let mut want: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
        want.sort();
        let want = &want;
        let what = format!("Service {ns}/{service} endpoints {want:?}");
        await_condition(what, timeout, Duration::from_millis(50), || async move {
            let got = self.service_endpoints(ns, service).await?;
            Ok(if got == *want {
                Check::Done(())
            } else {
                Check::NotYet(format!("endpoints are {got:?}"))
            })
        })
        .await
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
        let what = format!("the app of {ns}/{name} to be {role}");
        await_condition(what, timeout, Duration::from_millis(50), || async move {
            let Some(pod) = self.pod(ns, name).await? else {
                bail!("pod {ns}/{name} is gone while waiting for its app to be {role}");
            };
            let epoch = pod_epoch(&pod);
            Ok(match self.app_state(&pod).await {
                Ok(state) => {
                    let epoch_ok = role != ACTIVE || (epoch.is_some() && state.epoch == epoch);
                    if state.role.as_deref() == Some(role) && epoch_ok {
                        Check::Done(state)
                    } else {
                        Check::NotYet(format!("state {state:?}, pod epoch annotation {epoch:?}"))
                    }
                }
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        })
        .await
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
        let what = format!("group {ns}/{group} to settle");
        await_condition(what, timeout, Duration::from_millis(100), || {
            self.settled_once(ns, group, replicas)
        })
        .await
    }

    /// One look for [`Testbed::wait_settled`].
    async fn settled_once(&self, ns: &str, group: &str, replicas: usize) -> Result<Check<Settled>> {
        let view = self.group_view(ns, group).await?;
        let not_yet = |why: String| Ok(Check::NotYet(format!("{why}\n{}", view.table())));
        if let Some(why) = view.settled_problem(replicas) {
            return not_yet(why);
        }
        let active = view.active()[0].clone();
        let standbys: Vec<Pod> = view
            .live()
            .into_iter()
            .filter(|p| p.uid() != active.uid())
            .cloned()
            .collect();
        if ns == APP_NAMESPACE && group == APP_GROUP {
            let ip = pod_ip(&active).unwrap_or_default();
            let eps = self.service_endpoints(ns, APP_SERVICE).await?;
            if eps != [ip.clone()] {
                return not_yet(format!("service endpoints {eps:?}, active IP {ip}"));
            }
        }
        if ns != APP_NAMESPACE {
            return Ok(Check::Done(Settled {
                active,
                standbys,
                app_state: None,
            }));
        }
        let epoch = pod_epoch(&active);
        match self.app_state(&active).await {
            Ok(s) if s.role.as_deref() == Some(ACTIVE) && s.epoch == epoch => {
                Ok(Check::Done(Settled {
                    active,
                    standbys,
                    app_state: Some(s),
                }))
            }
            Ok(s) => not_yet(format!(
                "active app state {s:?}, epoch annotation {epoch:?}"
            )),
            Err(e) => not_yet(format!("active app /state: {e:#}")),
        }
    }

    /// Steady state of the controller replicas: both Ready, exactly one labeled active, and
    /// it holds the Lease.
    pub async fn wait_controllers_settled(&self, timeout: Duration) -> Result<Settled> {
        let what = "the controller replicas to settle with the active one holding the Lease";
        await_condition(what, timeout, Duration::from_millis(100), || async move {
            let settled = match self
                .settled_once(CONTROLLER_NAMESPACE, CONTROLLER_GROUP, CONTROLLER_REPLICAS)
                .await?
            {
                Check::Done(settled) => settled,
                Check::NotYet(why) => return Ok(Check::NotYet(why)),
            };
            let holder = self.lease_holder().await?;
            if holder.as_deref() != Some(settled.active.name_any().as_str()) {
                return Ok(Check::NotYet(format!(
                    "active controller pod {} but Lease holder {holder:?}",
                    settled.active.name_any()
                )));
            }
            // A failover triggered right after a takeover would wait for the predecessor's
            // grants (by design); scenarios start from a controller past that window.
            let acting_for = self
                .lease_acquired_at()
                .await?
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .unwrap_or_default();
            Ok(if acting_for >= TAKEOVER_PROMOTION_WAIT {
                Check::Done(settled)
            } else {
                Check::NotYet(format!(
                    "the acting controller took over {} ms ago; it promotes nobody for {} ms",
                    acting_for.as_millis(),
                    TAKEOVER_PROMOTION_WAIT.as_millis()
                ))
            })
        })
        .await
    }

    /// The acting controller replica: the pod labeled active.
    pub async fn active_controller(&self, timeout: Duration) -> Result<Pod> {
        self.wait_one_active(CONTROLLER_NAMESPACE, CONTROLLER_GROUP, timeout)
            .await
    }

    /// Where kube-proxy forwards ClusterIPs (the real node), starts recording which pod answers
    /// the sample app's Service: what its clients see. Start it before the trigger and hand it
    /// to [`Testbed::await_failover`]. None on the process node, which has no kube-proxy.
    pub async fn watch_traffic(&self) -> Result<Option<ServiceProbe>> {
        match self.node_kind() {
            NodeKind::Real => Ok(Some(
                ServiceProbe::start(&self.client, APP_NAMESPACE, APP_SERVICE).await?,
            )),
            NodeKind::Process => Ok(None),
        }
    }

    /// After a trigger on the active app pod `old` at `t_trigger`: waits until another pod is
    /// the only active one, the Service's EndpointSlice lists only it and its app applied the
    /// notification (and, given `traffic` from [`Testbed::watch_traffic`], until the new active
    /// answers through the Service); returns the new active, its app state and the timeline.
    pub async fn await_failover(
        &self,
        old: &Pod,
        t_trigger: SystemTime,
        traffic: Option<ServiceProbe>,
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
        let mut timeline = self.history.timeline(
            t_trigger,
            old,
            &new,
            APP_NAMESPACE,
            APP_SERVICE,
            Some(&state),
        );
        if let Some(traffic) = traffic {
            timeline.traffic_unix_nanos = traffic
                .first_answer_from(&new.name_any(), timeline.trigger_unix_nanos, timeout)
                .await;
        }
        Ok((new, state, timeline))
    }

    /// Runs one failover of the sample app: the group must be settled first; performs
    /// `trigger` on the active pod, waits until another pod is the only active one, the
    /// Service's endpoints moved to it and its app applied the notification; returns the
    /// timeline (from the [`History`](super::history::History)) and the pods involved. Does not wait for the
    /// replacement: call [`Testbed::wait_settled`] afterwards.
    pub async fn failover(&self, trigger: Trigger, timeout: Duration) -> Result<Failover> {
        let before = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await
            .context("group not settled before the failover")?;
        let old = before.active.clone();
        let traffic = self.watch_traffic().await?;
        let t_trigger = self.trigger(&old, trigger).await?;
        let (new, state, timeline) = self
            .await_failover(&old, t_trigger, traffic, timeout)
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
