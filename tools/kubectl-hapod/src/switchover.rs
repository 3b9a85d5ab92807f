//! `kubectl hapod switchover`: a planned move of the active role to a standby, without killing
//! a pod. It drains the active pod (`hapod.io/drain=true`); the controller then moves the role
//! as it does off an unready active: the old active is told to stand by and the standby is
//! promoted once the old application has stopped acting (it relinquished, or its grant ran
//! out), so two applications never act at once. With `--to`, the other eligible standbys are
//! drained too for the time of the move. The drains are lifted once the role has moved (or
//! the wait timed out), unless `--keep-drained`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hapod_controller::podview::{DRAIN_ANNOTATION, pod_view};
use hapod_core::{Config, PodView, Role};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::pods::{self, Change, set_annotation};

/// How often the pods are read while waiting for the role to move.
const POLL: Duration = Duration::from_millis(100);

/// What to move where.
pub struct Request<'a> {
    pub group: &'a str,
    /// The standby to promote; none: the one the controller picks (the oldest eligible).
    pub to: Option<&'a str>,
    pub timeout: Duration,
    pub keep_drained: bool,
}

/// The pods to drain for `request` in `group` (the active first), or why the switchover
/// cannot be done.
pub fn plan(group: &[PodView], config: &Config, request: &Request<'_>) -> Result<Vec<PodView>> {
    let actives: Vec<&PodView> = group
        .iter()
        .filter(|p| p.role(config) == Role::Active)
        .collect();
    let [active] = actives[..] else {
        bail!(
            "group {} has {} pods labeled active; a switchover needs exactly one",
            request.group,
            actives.len()
        );
    };
    let eligible: Vec<&PodView> = group
        .iter()
        .filter(|p| p.uid != active.uid && p.unfit_by_api().is_none())
        .collect();
    let mut drain = vec![active.clone()];
    match request.to {
        None if eligible.is_empty() => {
            let unfit: Vec<String> = group
                .iter()
                .filter(|p| p.uid != active.uid)
                .map(|p| {
                    let why = p.unfit_by_api().map_or("?", |r| r.as_str());
                    format!("{} ({why})", p.name)
                })
                .collect();
            bail!(
                "no eligible standby in group {} to switch over to: {}",
                request.group,
                if unfit.is_empty() {
                    "it has no other pod".to_owned()
                } else {
                    unfit.join(", ")
                }
            );
        }
        None => {}
        Some(target) => {
            let Some(pod) = group.iter().find(|p| p.name == target) else {
                bail!("{target} is not a pod of group {}", request.group);
            };
            if pod.uid == active.uid {
                bail!("{target} is the active pod already");
            }
            if let Some(why) = pod.unfit_by_api() {
                bail!("{target} is not an eligible standby ({})", why.as_str());
            }
            drain.extend(eligible.into_iter().filter(|p| p.uid != pod.uid).cloned());
        }
    }
    Ok(drain)
}

/// Carries out `request` on the pods `api` lists with `selector`; returns the new active.
pub async fn run(
    api: &Api<Pod>,
    selector: &str,
    config: &Config,
    group_label: &str,
    request: &Request<'_>,
) -> Result<String> {
    let group = read_group(api, selector, config, group_label).await?;
    let drained = plan(&group, config, request)?;
    let old = drained[0].clone();
    for pod in &drained {
        set_drain(api, pod, true).await?;
    }
    let moved = wait_for_move(api, selector, config, group_label, &old, request).await;
    if !request.keep_drained || moved.is_err() {
        for pod in &drained {
            // A pod gone meanwhile has nothing to lift.
            if let Err(e) = set_drain(api, pod, false).await {
                eprintln!("warning: could not lift the drain of {}: {e:#}", pod.name);
            }
        }
    }
    moved
}

async fn read_group(
    api: &Api<Pod>,
    selector: &str,
    config: &Config,
    group_label: &str,
) -> Result<Vec<PodView>> {
    Ok(pods::list(api, selector)
        .await?
        .iter()
        .filter_map(|p| pod_view(p, config, group_label).ok())
        .collect())
}

/// Sets or removes the drain annotation of exactly `pod` (its UID is a precondition).
async fn set_drain(api: &Api<Pod>, pod: &PodView, drained: bool) -> Result<()> {
    let change = if drained {
        Change::Set("true")
    } else {
        Change::Remove
    };
    set_annotation(api, &pod.name, &pod.uid, DRAIN_ANNOTATION, change)
        .await
        .with_context(|| {
            format!(
                "{} the drain of {}",
                if drained { "setting" } else { "lifting" },
                pod.name
            )
        })?;
    Ok(())
}

/// Waits until another pod than `old` is the only one labeled active (the requested one, if
/// any) and `old` is labeled standby; returns the new active's name.
async fn wait_for_move(
    api: &Api<Pod>,
    selector: &str,
    config: &Config,
    group_label: &str,
    old: &PodView,
    request: &Request<'_>,
) -> Result<String> {
    let deadline = Instant::now() + request.timeout;
    loop {
        let group = read_group(api, selector, config, group_label).await?;
        let actives: Vec<&PodView> = group
            .iter()
            .filter(|p| p.role(config) == Role::Active)
            .collect();
        let old_standby = group
            .iter()
            .find(|p| p.uid == old.uid)
            .is_none_or(|p| p.role(config) == Role::Standby);
        if let [new] = actives[..]
            && new.uid != old.uid
            && old_standby
        {
            if let Some(to) = request.to
                && new.name != to
            {
                bail!("the controller promoted {} instead of {to}", new.name);
            }
            return Ok(new.name.clone());
        }
        if Instant::now() >= deadline {
            bail!(
                "the role did not move off {} within {:?} (is the controller running? `kubectl hapod status` shows the group)",
                old.name,
                request.timeout
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, role: &str, created: i64, ready: bool) -> PodView {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "labels": {"app": "db", "role": role},
                "creationTimestamp": format!("2027-01-15T08:00:{created:02}Z"),
            },
            "status": {
                "phase": "Running", "podIP": "10.244.0.9",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap();
        pod_view(&pod, &Config::default(), "app").unwrap()
    }

    fn request(to: Option<&str>) -> Request<'_> {
        Request {
            group: "db",
            to,
            timeout: Duration::from_secs(1),
            keep_drained: false,
        }
    }

    fn planned(group: &[PodView], to: Option<&str>) -> Result<Vec<String>, String> {
        plan(group, &Config::default(), &request(to))
            .map(|pods| pods.into_iter().map(|p| p.name).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_active_is_drained_and_with_a_target_the_other_standbys_too() {
        let group = [
            view("a", "active", 1, true),
            view("b", "standby", 2, true),
            view("c", "standby", 3, true),
            view("d", "standby", 4, false),
        ];
        assert_eq!(planned(&group, None).unwrap(), ["a"]);
        // b would be picked first: it is drained too; d cannot be picked anyway.
        assert_eq!(planned(&group, Some("c")).unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_switchover_that_cannot_be_done_says_why() {
        let unready = [view("a", "active", 1, true), view("b", "standby", 2, false)];
        assert_eq!(
            planned(&unready, None).unwrap_err(),
            "no eligible standby in group db to switch over to: b (not_ready)"
        );
        assert_eq!(
            planned(&unready, Some("b")).unwrap_err(),
            "b is not an eligible standby (not_ready)"
        );
        let two = [view("a", "active", 1, true), view("b", "active", 2, true)];
        assert!(
            planned(&two, None)
                .unwrap_err()
                .contains("2 pods labeled active")
        );
        let ok = [view("a", "active", 1, true), view("b", "standby", 2, true)];
        assert_eq!(
            planned(&ok, Some("a")).unwrap_err(),
            "a is the active pod already"
        );
        assert_eq!(
            planned(&ok, Some("x")).unwrap_err(),
            "x is not a pod of group db"
        );
    }
}
