//! The controller's wiring: pod watch streams -> router -> per-group workers, leadership
//! changes, periodic re-planning, the Event publisher, notification outcomes and HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use hapod_core::Event;
use hapod_protocol::sender::{Delivery, Outcome};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::{Metrics, NotificationLabels, Stage, Verb};
use crate::router::{GroupKey, Router, Scope};
use crate::worker::{Input, PodNote, Shared, Worker};
use crate::writer::{Fence, Writer, status_code};

/// What the dispatcher needs besides the client.
pub struct Settings {
    /// Label selector of the application pods.
    pub selector: String,
    /// Namespaces to watch; empty: all. Blanks and duplicates are dropped.
    pub namespaces: Vec<String>,
    /// Period of the re-planning of every group from its cached state; also how long a group
    /// stays without pods before its worker is stopped.
    pub resync: Duration,
    /// This replica's own pod (namespace, name): where controller-level Events go.
    pub controller_pod: Option<(String, String)>,
}

/// The merged pod watches, each event tagged with the scope of its stream.
type PodEvents = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (Scope, Result<watcher::Event<Pod>, watcher::Error>)>,
>;

/// Routes watch events to group workers and follows leadership.
pub struct Dispatcher {
    client: Client,
    settings: Settings,
    shared: Arc<Shared>,
    fence: Arc<dyn Fence>,
    router: Router,
    groups: HashMap<GroupKey, mpsc::UnboundedSender<Input>>,
    /// Groups without pods, since when: their workers are stopped after `settings.resync`.
    empty_since: HashMap<GroupKey, Instant>,
    /// Term held (the Lease), or `None` while standing by.
    term: Option<u32>,
    /// Scopes listed since the watches last (re)started: the term acts in these only.
    synced: HashSet<Scope>,
    /// Unsynced scopes whose list failure was already reported as an Event.
    reported: HashSet<Scope>,
    ready: Arc<AtomicBool>,
}

impl Dispatcher {
    pub fn new(
        client: Client,
        mut settings: Settings,
        shared: Arc<Shared>,
        fence: Arc<dyn Fence>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        settings.namespaces = distinct_namespaces(&settings.namespaces);
        let router = Router::new(
            Arc::clone(&shared.config),
            shared.group_label.clone(),
            shared.metrics.clone(),
        );
        Self {
            client,
            settings,
            shared,
            fence,
            router,
            groups: HashMap::new(),
            empty_since: HashMap::new(),
            term: None,
            synced: HashSet::new(),
            reported: HashSet::new(),
            ready,
        }
    }

    fn scopes(&self) -> Vec<Scope> {
        if self.settings.namespaces.is_empty() {
            vec![None]
        } else {
            self.settings.namespaces.iter().cloned().map(Some).collect()
        }
    }

    /// The scope (watch stream) a group's pods come from.
    fn scope_of(&self, key: &GroupKey) -> Scope {
        (!self.settings.namespaces.is_empty()).then(|| key.namespace.clone())
    }

    fn pods_in(&self, scope: &Scope) -> Api<Pod> {
        match scope {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// One pod watch per scope, merged. Re-lists use consistent reads: a list served from a
    /// stale cache could miss a pod that exists.
    fn watch_streams(&self) -> PodEvents {
        let config = watcher::Config::default()
            .labels(&self.settings.selector)
            .list_semantic(watcher::ListSemantic::MostRecent);
        futures::stream::select_all(self.scopes().into_iter().map(|scope| {
            watcher(self.pods_in(&scope), config.clone())
                .default_backoff()
                .map(move |event| (scope.clone(), event))
                .boxed()
        }))
    }

    /// (Re)starts the watches: every scope must list again before the term acts in it.
    fn restart_watches(&mut self) -> PodEvents {
        self.synced.clear();
        self.sync_changed();
        self.watch_streams()
    }

    /// Runs until the leadership channel closes (the election task is gone).
    ///
    /// Taking over restarts the watches and acts in each scope (namespace) once it has
    /// re-listed: the cache may lag behind the writes of the replica that acted before, and a
    /// re-list delivered in watch order can never be overtaken by older events. A namespace
    /// whose list keeps failing holds back only itself (reported by `/readyz`, the metric
    /// `hapod_unsynced_scopes` and the log).
    pub async fn run(mut self, mut leader: watch::Receiver<Option<u32>>) {
        let mut watch = self.restart_watches();
        self.term = *leader.borrow_and_update();
        let mut resync = tokio::time::interval(self.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some((scope, event)) = watch.next() => {
                    let received = Instant::now();
                    match event {
                        Ok(event) => {
                            let listed = matches!(event, watcher::Event::InitDone);
                            for (key, event) in self.router.route(&scope, event) {
                                self.send(key, event, received);
                            }
                            if listed && self.synced.insert(scope.clone()) {
                                self.reported.remove(&scope);
                                self.sync_changed();
                                if let Some(term) = self.term {
                                    self.act_in(&scope, term);
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(?scope, %error, "pod watch failed; retrying with backoff");
                            if let watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) = &error {
                                self.shared.metrics.api_error(Verb::list, status_code(e));
                            }
                            if !self.synced.contains(&scope) {
                                self.report_unlisted(&scope, &error);
                            }
                        }
                    }
                }
                changed = leader.changed() => {
                    let term = match changed {
                        Ok(()) => *leader.borrow_and_update(),
                        Err(_) => {
                            tracing::error!("leader election stopped; no longer acting");
                            self.stand_by();
                            return;
                        }
                    };
                    if term == self.term {
                        continue;
                    }
                    // Stop acting at once; a new term acts after a fresh list of each scope.
                    self.stand_by();
                    self.term = term;
                    if term.is_some() {
                        watch = self.restart_watches();
                    }
                }
                _ = resync.tick() => {
                    self.broadcast(Event::Tick);
                    self.reap_idle_groups();
                }
            }
        }
    }

    /// Starts acting in `term` for every group of `scope`.
    fn act_in(&mut self, scope: &Scope, term: u32) {
        tracing::info!(term, ?scope, "acting");
        self.shared.metrics.acting.set(1);
        let now = Instant::now();
        let event = Event::Leadership(Some(term));
        for (key, tx) in &self.groups {
            if self.scope_of(key) == *scope {
                let _ = tx.send((event.clone(), now));
            }
        }
    }

    /// Tells every group to stop acting.
    fn stand_by(&mut self) {
        if self.term.take().is_some() {
            tracing::info!("standing by");
            self.shared.metrics.acting.set(0);
            self.broadcast(Event::Leadership(None));
        }
    }

    /// Publishes which scopes have not listed yet (readiness, metric).
    fn sync_changed(&self) {
        let unsynced: Vec<Scope> = self
            .scopes()
            .into_iter()
            .filter(|s| !self.synced.contains(s))
            .collect();
        self.shared
            .metrics
            .unsynced_scopes
            .set(i64::try_from(unsynced.len()).unwrap_or(i64::MAX));
        self.ready.store(unsynced.is_empty(), Ordering::Release);
        if !unsynced.is_empty() && !self.synced.is_empty() {
            tracing::warn!(
                ?unsynced,
                "pod list not complete in these namespaces; acting in the others"
            );
        }
    }

    /// One Warning Event on the controller's own pod per scope that cannot list its pods,
    /// until it lists again.
    fn report_unlisted(&mut self, scope: &Scope, error: &watcher::Error) {
        let Some((namespace, pod)) = &self.settings.controller_pod else {
            return;
        };
        if !self.reported.insert(scope.clone()) {
            return;
        }
        let which = scope
            .as_deref()
            .map_or("all namespaces".to_owned(), |ns| format!("namespace {ns}"));
        let note = PodNote {
            namespace: namespace.clone(),
            pod: pod.clone(),
            uid: String::new(),
            reason: "NamespaceNotListed",
            note: format!("cannot list pods in {which}; not acting there until it lists: {error}"),
            warning: true,
        };
        if self.shared.notes.try_send(note).is_err() {
            tracing::debug!(?scope, "event queue full; event dropped");
        }
    }

    fn broadcast(&mut self, event: Event) {
        let now = Instant::now();
        self.groups
            .retain(|_, tx| tx.send((event.clone(), now)).is_ok());
    }

    /// Stops the workers of groups that have had no pod for a whole resync period. A worker
    /// finishes what it was sent, then exits and leaves every gauge.
    fn reap_idle_groups(&mut self) {
        let now = Instant::now();
        let idle = self.settings.resync;
        let reaped: Vec<GroupKey> = self
            .empty_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= idle)
            .map(|(key, _)| key.clone())
            .collect();
        for key in reaped {
            self.empty_since.remove(&key);
            self.groups.remove(&key);
            tracing::debug!(group = %key, "group without pods: worker stopped");
        }
    }

    fn send(&mut self, key: GroupKey, event: Event, received: Instant) {
        if self.router.is_empty(&key) {
            self.empty_since.entry(key.clone()).or_insert(received);
        } else {
            self.empty_since.remove(&key);
        }
        if let Some(tx) = self.groups.get(&key) {
            // A closed channel means the worker panicked; nothing to deliver to.
            let _ = tx.send((event, received));
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(
            Api::namespaced(self.client.clone(), &key.namespace),
            Arc::clone(&self.shared.config),
            Arc::clone(&self.fence),
            self.shared.metrics.clone(),
            Arc::clone(&self.shared.api_requests),
        );
        let worker = Worker::new(key.clone(), writer, Arc::clone(&self.shared))
            .with_reports_to(tx.downgrade());
        tokio::spawn(worker.run(rx));
        // The first pod goes in before the leadership, so the new group is judged with it
        // (no spurious "no eligible pod" report for a group that is empty for an instant).
        let _ = tx.send((event, received));
        if let Some(term) = self
            .term
            .filter(|_| self.synced.contains(&self.scope_of(&key)))
        {
            let _ = tx.send((Event::Leadership(Some(term)), received));
        }
        self.groups.insert(key, tx);
    }
}

/// Namespaces trimmed, blanks and duplicates dropped, in their first order: two watches of one
/// namespace would interleave two re-lists of the same pods.
pub fn distinct_namespaces(namespaces: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    namespaces
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty() && seen.insert(*n))
        .map(str::to_owned)
        .collect()
}

/// How long repeats of one note count into one Event (a series) rather than a new one: the
/// window of kube's `Recorder` cache and of client-go's.
const EVENT_SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Publishes Kubernetes Events about pods, one at a time, away from the workers.
///
/// A repeated note counts up its Event (an events.k8s.io series); a new note on the same pod
/// and reason is an Event of its own. kube's `Recorder` keys its series on everything but the
/// note (client-go keys on the note too), so a pod promoted twice within its window would
/// keep the first promotion's note, and `kubectl hapod status` the old epoch: one `Recorder`
/// per distinct note, dropped once its window has passed.
pub async fn publish_notes(client: Client, reporter: Reporter, mut notes: mpsc::Receiver<PodNote>) {
    let mut recorders: HashMap<PodNote, (Recorder, Instant)> = HashMap::new();
    while let Some(note) = notes.recv().await {
        let now = Instant::now();
        recorders.retain(|_, (_, used)| now.duration_since(*used) < EVENT_SERIES_WINDOW);
        let (recorder, used) = recorders
            .entry(note.clone())
            .or_insert_with(|| (Recorder::new(client.clone(), reporter.clone()), now));
        *used = now;
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(note.pod.clone()),
            namespace: Some(note.namespace.clone()),
            // Unknown for the controller's own pod.
            uid: (!note.uid.is_empty()).then(|| note.uid.clone()),
            ..ObjectReference::default()
        };
        let event = kube::runtime::events::Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(note.note),
            action: "SetRole".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::debug!(pod = %note.pod, %error, "event not published");
        }
    }
}

/// Turns notification outcomes into metrics and log lines (the last stage of a failover).
pub async fn track_notifications(mut outcomes: mpsc::UnboundedReceiver<Outcome>, metrics: Metrics) {
    while let Some(outcome) = outcomes.recv().await {
        let label = match outcome.delivery {
            Delivery::Acked { rtt, attempts } => {
                metrics.stage(Stage::notify_ack, rtt);
                tracing::debug!(group = %outcome.group, pod = %outcome.pod, role = outcome.role.as_str(),
                    epoch = outcome.epoch, message_id = outcome.message_id,
                    ack_us = rtt.as_micros() as u64, attempts, "notification acknowledged");
                "acked"
            }
            Delivery::TimedOut { attempts } => {
                tracing::warn!(group = %outcome.group, pod = %outcome.pod, addr = %outcome.addr,
                    role = outcome.role.as_str(), epoch = outcome.epoch, attempts,
                    "notification not acknowledged before the deadline");
                "timed_out"
            }
            Delivery::Superseded { .. } => "superseded",
        };
        metrics
            .notifications
            .get_or_create(&NotificationLabels {
                role: outcome.role.as_str().into(),
                outcome: label.into(),
            })
            .inc();
    }
}

/// `/metrics`, `/healthz`, `/readyz` (ready once every watch has listed its pods).
pub fn http_routes(registry: Arc<Registry>, ready: Arc<AtomicBool>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        ),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain")],
                            String::new(),
                        ),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "pod watch not synced\n")
                    }
                }
            }),
        )
}
