//! One test (or a few) per rule of the controller's behaviour, a module per topic.

#[path = "../common/mod.rs"]
mod common;

mod choice;
mod critical;
mod epochs;
mod failover;
mod grace;
mod labels;
mod lease;
mod pause;
mod route;
mod silence;
mod writes;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::{Ctl, active, force_deleting, pod, single_write, writes};
use hapod_core::{
    Action, Event, Health, Notify, Phase, PromotionReason, Purpose, RecordKind, Role, RoleOrder,
    WriteKind, WriteOutcome, epoch,
};

fn promoted(actions: &[Action]) -> Vec<(String, u64, PromotionReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(r) => match &r.kind {
                RecordKind::Promoted { epoch, reason, .. } => {
                    Some((r.pod.as_ref()?.name.clone(), *epoch, *reason))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn notifies(actions: &[Action]) -> Vec<&Notify> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn orders(actions: &[Action]) -> Vec<&RoleOrder> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Order(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// The writes among `actions`, in order: the pod, and whether it is a delete.
fn write_order(actions: &[Action]) -> Vec<(String, bool)> {
    writes(actions)
        .iter()
        .map(|w| (w.pod.clone(), matches!(w.kind, WriteKind::Delete { .. })))
        .collect()
}

fn is_set_role(w: &hapod_core::Write, pod: &str, role: Role) -> bool {
    w.pod == pod && matches!(&w.kind, WriteKind::SetRole { role: r, .. } if *r == role)
}
