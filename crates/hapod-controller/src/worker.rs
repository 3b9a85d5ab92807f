//! One task per group: owns the group's core state, feeds it events in order and carries out
//! its actions. Writes of a group are serialized by construction; groups run concurrently.
//! Notifications, Kubernetes Events and metrics never block the next write.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hapod_core::{
    Action, Config, Event, GroupState, Health, Notify, Record, RecordKind, Role, Write,
    WriteOutcome, decide,
};
use hapod_protocol::Notification;
use hapod_protocol::sender::Notifier;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::metrics::{Metrics, ReasonLabels, Stage};
use crate::podview::pod_view;
use crate::router::GroupKey;
use crate::writer::Writer;

/// An event with the instant it was received (the start of every latency).
pub type Input = (Event, Instant);

/// A Kubernetes Event to publish about a pod, off the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNote {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub reason: &'static str,
    pub note: String,
    pub warning: bool,
}

/// What every worker shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub group_label: String,
    pub notifier: Notifier,
    pub notify_port: u16,
    pub notes: mpsc::Sender<PodNote>,
    pub metrics: Metrics,
}

/// Retry delay after a failed re-read.
const REREAD_RETRY: Duration = Duration::from_millis(200);

pub struct Worker {
    key: GroupKey,
    state: GroupState,
    writer: Writer,
    shared: Arc<Shared>,
    wake_at: Option<Instant>,
    without_active: bool,
}

impl Worker {
    pub fn new(key: GroupKey, writer: Writer, shared: Arc<Shared>) -> Self {
        Self {
            state: GroupState::new(Arc::clone(&shared.config)),
            key,
            writer,
            shared,
            wake_at: None,
            without_active: false,
        }
    }

    /// Runs until the input channel closes.
    pub async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<Input>) {
        self.shared.metrics.groups.inc();
        loop {
            let input = tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => input,
                    None => break,
                },
                () = sleep_until(self.wake_at.unwrap_or_else(Instant::now)), if self.wake_at.is_some() => {
                    self.wake_at = None;
                    (Event::Tick, Instant::now())
                }
            };
            self.handle(input).await;
        }
        self.shared.metrics.groups.dec();
        if self.without_active {
            self.shared.metrics.groups_without_active.dec();
        }
    }

    /// Feeds one input and everything it leads to (write outcomes, re-reads) into the core.
    pub async fn handle(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some((event, received)) = queue.pop_front() {
            let actions = decide(&mut self.state, event, received.into_std());
            let decided = Instant::now();
            for action in actions {
                if let Some(next) = self.act(action, received, decided).await {
                    queue.push_back(next);
                }
            }
        }
    }

    async fn act(&mut self, action: Action, received: Instant, decided: Instant) -> Option<Input> {
        match action {
            Action::Write(write) => Some(self.write(write, received, decided).await),
            Action::Refresh { pod, uid } => match self.writer.read(&pod).await {
                Ok(Some(fresh)) => {
                    let view = pod_view(&fresh, &self.shared.config, &self.shared.group_label);
                    let event = match view {
                        Ok(view) if view.group == self.key.group => Event::Applied(view),
                        // Relabeled out of the group meanwhile: gone from this group.
                        _ => Event::Deleted { name: pod, uid },
                    };
                    Some((event, Instant::now()))
                }
                Ok(None) => Some((Event::Deleted { name: pod, uid }, Instant::now())),
                Err(error) => {
                    tracing::warn!(group = %self.key, %pod, %error, "re-read after conflict failed");
                    self.wake(REREAD_RETRY);
                    None
                }
            },
            Action::Notify(notify) => {
                self.notify(notify, received);
                None
            }
            Action::Record(record) => {
                self.record(record);
                None
            }
            Action::WakeAfter(delay) => {
                self.wake(delay);
                None
            }
            Action::Health(health) => {
                self.health(health);
                None
            }
        }
    }

    async fn write(&mut self, write: Write, received: Instant, decided: Instant) -> Input {
        let sent = Instant::now();
        let outcome = self.writer.execute(&write).await;
        let acked = Instant::now();
        let metrics = &self.shared.metrics;
        metrics.stage(Stage::decide, decided - received);
        metrics.stage(Stage::send, sent - decided);
        if matches!(outcome, WriteOutcome::Done { .. }) {
            metrics.stage(Stage::ack, acked - sent);
        }
        tracing::debug!(
            group = %self.key,
            pod = %write.pod,
            op = write.op,
            kind = ?write.kind,
            ?outcome,
            decide_us = (decided - received).as_micros() as u64,
            send_us = (sent - decided).as_micros() as u64,
            ack_us = (acked - sent).as_micros() as u64,
            "write stages"
        );
        (
            Event::Outcome {
                op: write.op,
                outcome,
            },
            acked,
        )
    }

    fn wake(&mut self, delay: Duration) {
        // Jitter of up to a quarter spreads the retries of many groups after an API outage.
        let quarter = u64::try_from(delay.as_micros() / 4).unwrap_or(u64::MAX);
        let jitter = Duration::from_micros(rand::random_range(0..=quarter));
        let at = Instant::now() + delay + jitter;
        self.wake_at = Some(self.wake_at.map_or(at, |t| t.min(at)));
    }

    fn notify(&self, notify: Notify, acked: Instant) {
        let role = match notify.role {
            Role::Active => hapod_protocol::Role::Active,
            _ => hapod_protocol::Role::Standby,
        };
        let message = Notification::new(self.key.to_string(), &notify.pod, role, notify.epoch);
        let message_id = message.message_id;
        let addr = SocketAddr::new(notify.ip, self.shared.notify_port);
        let metrics = &self.shared.metrics;
        match self.shared.notifier.notify(addr, message) {
            Ok(()) => {
                metrics.stage(Stage::notify, acked.elapsed());
                tracing::debug!(
                    group = %self.key, pod = %notify.pod, %addr, role = role.as_str(),
                    epoch = notify.epoch, message_id, notify_us = acked.elapsed().as_micros() as u64,
                    "notification sent"
                );
            }
            Err(error) => {
                metrics
                    .notifications
                    .get_or_create(&crate::metrics::NotificationLabels {
                        role: role.as_str().into(),
                        outcome: "refused".into(),
                    })
                    .inc();
                tracing::warn!(group = %self.key, pod = %notify.pod, %addr, %error, "notification refused");
            }
        }
    }

    fn record(&self, record: Record) {
        let metrics = &self.shared.metrics;
        let (reason, note, warning) = match &record.kind {
            RecordKind::Promoted {
                epoch,
                reason,
                latency,
            } => {
                metrics
                    .promotions
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str().into(),
                    })
                    .inc();
                if let Some(latency) = latency {
                    metrics.failover_latency.observe(latency.as_secs_f64());
                }
                let latency_ms = latency.map(|l| l.as_secs_f64() * 1e3);
                tracing::info!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name),
                    epoch, reason = reason.as_str(), ?latency_ms, "promoted");
                let note = match latency_ms {
                    Some(ms) => format!(
                        "promoted to active, epoch {epoch}, reason {}, failover {ms:.1} ms",
                        reason.as_str()
                    ),
                    None => format!(
                        "promoted to active, epoch {epoch}, reason {}",
                        reason.as_str()
                    ),
                };
                ("Promoted", note, false)
            }
            RecordKind::Demoted => {
                metrics.demotions.inc();
                tracing::info!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), "demoted");
                ("Demoted", "relabeled standby".to_owned(), false)
            }
            RecordKind::Killed { container } => {
                metrics.kills.inc();
                tracing::warn!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), container, "critical container died: pod deleted");
                (
                    "CriticalContainerDied",
                    format!("critical container {container} died: pod deleted (grace 0)"),
                    true,
                )
            }
            RecordKind::NoEligible => {
                tracing::warn!(group = %self.key, "no eligible pod to make active");
                (
                    "NoEligiblePod",
                    format!("group {} has no active pod and no eligible one", self.key),
                    true,
                )
            }
            RecordKind::Rejected { delete, code } => {
                let verb = if *delete { "delete" } else { "patch" };
                tracing::error!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), verb, code, "write refused by the API; retried after a pause");
                (
                    "WriteRejected",
                    format!("{verb} refused with HTTP {code}; check RBAC and admission"),
                    true,
                )
            }
        };
        let Some(pod) = record.pod else {
            return;
        };
        let note = PodNote {
            namespace: self.key.namespace.clone(),
            pod: pod.name,
            uid: pod.uid,
            reason,
            note,
            warning,
        };
        if self.shared.notes.try_send(note).is_err() {
            tracing::debug!(group = %self.key, reason, "event queue full; event dropped");
        }
    }

    fn health(&mut self, health: Health) {
        let without = health != Health::Active;
        if without != self.without_active {
            self.without_active = without;
            let gauge = &self.shared.metrics.groups_without_active;
            if without {
                gauge.inc();
            } else {
                gauge.dec();
            }
        }
    }
}
