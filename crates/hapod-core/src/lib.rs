//! Pure decision core of hapod: no I/O, no Kubernetes client, no async runtime.
//!
//! The runtime builds a [`PodView`] per pod, keeps one [`GroupState`] per group (namespace +
//! group label value) and feeds it [`Event`]s; [`decide`] answers with [`Action`]s to carry out
//! in order. Writes are answered with [`Event::Outcome`], so every step that depends on an
//! earlier write (promote after demote, notify after the label write) waits for it.

pub mod epoch;
mod group;
mod pod;

pub use group::{
    Action, Endpoint, Event, GroupState, Health, Notify, OpId, PodRef, PromotionReason, Purpose,
    Record, RecordKind, ReportedRole, RoleOrder, Route, Write, WriteKind, WriteOutcome, decide,
};
pub use pod::{ApplicationLease, Config, CriticalContainer, Phase, PodView, Role, Routing};
