//! A pod's containers as processes: starting one (image, environment, mounts, command line),
//! retrying with backoff when it cannot start, and handling its exit (restart policy and
//! crash-loop backoff). Kept apart from the pod's lifecycle so each reads on its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::Signal;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::{Exit, Message, PodWorker, now};
use crate::command::command_line;
use crate::expand::{EnvError, ReferencedData, build_env, expand, referenced_objects};
use crate::path_error::{AtPath, PathError};
use crate::probe::ProbeKind;
use crate::process::{BindMount, ProcessSpec, build_command, signal_group};
use crate::status::{ContainerView, RunState, Terminated, should_restart};
use crate::volumes::{self, VolumeError};

/// Why a container cannot be set up; it waits in `CreateContainerConfigError` and is retried.
#[derive(Debug, thiserror::Error)]
pub(super) enum ContainerConfigError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Fetch(#[from] VolumeError),
    #[error("volume {volume} of mount {mount_path} is not available")]
    VolumeUnavailable { volume: String, mount_path: String },
    #[error("subPath {0} must stay inside the volume")]
    SubPathEscapes(String),
    #[error(transparent)]
    Io(#[from] PathError),
}

impl PodWorker {
    /// Waits in `reason` and retries after the container's backoff.
    pub(super) fn wait_and_retry(&mut self, index: usize, reason: &str, message: String) {
        let c = &mut self.containers[index];
        tracing::warn!(pod = %format_args!("{}/{}", self.namespace, self.name), container = %c.view.name, reason, %message, "container cannot start");
        c.view.state = RunState::Waiting {
            reason: reason.into(),
            message: Some(message),
        };
        let delay = c.backoff;
        c.backoff = (c.backoff * 2).min(self.node.config.backoff_max);
        let instance = c.instance;
        self.after(delay, Message::Retry { index, instance });
        self.mark();
    }

    pub(super) async fn start(&mut self, index: usize) {
        self.mark();
        let first_attempt = self.containers[index].attempts == 0;
        {
            let c = &mut self.containers[index];
            c.attempts += 1;
            c.instance += 1;
        }
        let image = self.containers[index].view.image.clone();
        let binary = match self.node.config.images.resolve(&image) {
            Ok(b) => b,
            Err(e) => {
                let reason = if first_attempt {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                self.wait_and_retry(index, reason, e.to_string());
                return;
            }
        };
        self.containers[index].view.image_id = Some(format!("hapod-node://{}", binary.display()));
        let env = match self.container_env(index).await {
            Ok(env) => env,
            Err(e) => {
                self.wait_and_retry(index, "CreateContainerConfigError", e.to_string());
                return;
            }
        };
        let mounts = match self.mounts(index) {
            Ok(m) => m,
            Err(e) => {
                self.wait_and_retry(index, "CreateContainerConfigError", e.to_string());
                return;
            }
        };
        let c = &self.containers[index];
        // A restarted container gets a fresh /tmp, as a new container's writable layer would.
        if c.runs > 0 {
            clear_dir(&c.tmp_dir);
        }
        let (program, args) = command_line(&c.spec, &binary, &env);
        let spec = ProcessSpec {
            program: program.clone(),
            args,
            env: env.clone(),
            working_dir: c.spec.working_dir.as_ref().map(PathBuf::from),
            tmp_dir: Some(c.tmp_dir.clone()),
            mounts,
            log_file: Some(c.log_file.clone()),
            join_mount_ns_of: None,
        };
        let spawned = match build_command(&spec) {
            Ok(cmd) => self.node.spawner.spawn(cmd).await,
            Err(e) => Err(e),
        };
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let message = format!("failed to start {}: {e}", program.display());
                self.wait_and_retry(index, "RunContainerError", message);
                return;
            }
        };
        let Some(pid) = child.id() else {
            self.wait_and_retry(
                index,
                "RunContainerError",
                "process exited before it was tracked".into(),
            );
            return;
        };
        let uid = self.uid.clone();
        let c = &mut self.containers[index];
        if c.runs > 0 {
            c.view.restart_count += 1;
        }
        c.runs += 1;
        c.pid = Some(pid);
        c.env = env;
        c.program = Some(binary);
        let started_at = now();
        c.view.state = RunState::Running {
            started_at,
            container_id: format!(
                "hapod-node://{uid}/{}/{}",
                c.view.name, c.view.restart_count
            ),
        };
        let has_startup = c.spec.startup_probe.is_some();
        c.view.started = !has_startup;
        c.view.ready = !has_startup && c.spec.readiness_probe.is_none();
        tracing::info!(pod = %format!("{}/{}", self.namespace, self.name), container = %c.view.name, pid, restarts = c.view.restart_count, "container started");
        let instance = c.instance;
        let tx = self.tx.clone();
        // The child's exit is reported as soon as the runtime reaps it (SIGCHLD), not polled.
        tokio::spawn(async move {
            let (code, signal) = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    (status.code(), status.signal())
                }
                Err(_) => (None, Some(libc::SIGKILL)),
            };
            let exit = Exit {
                index,
                instance,
                code,
                signal,
                at: now(),
            };
            let _ = tx.send(Message::Exited {
                exit,
                relisted: false,
            });
        });
        if has_startup {
            self.spawn_probe(index, ProbeKind::Startup);
        } else {
            self.spawn_probe(index, ProbeKind::Readiness);
            self.spawn_probe(index, ProbeKind::Liveness);
        }
    }

    pub(super) async fn container_env(
        &self,
        index: usize,
    ) -> Result<Vec<(String, String)>, ContainerConfigError> {
        let container = &self.containers[index].spec;
        let (secrets, config_maps) = referenced_objects(container);
        let mut references = ReferencedData::default();
        for name in secrets {
            let data = volumes::secret_strings(&self.node.client, &self.namespace, &name).await?;
            references.secrets.insert(name, data);
        }
        for name in config_maps {
            let data =
                volumes::config_map_strings(&self.node.client, &self.namespace, &name).await?;
            references.config_maps.insert(name, data);
        }
        let mut env = build_env(&self.pod, container, &self.env_context(), &references)?;
        // What a container runtime adds: a PATH, HOME and the pod's host name; then what
        // the node was told to add (`--container-env`).
        let runtime = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("HOME", "/root"),
            ("HOSTNAME", self.name.as_str()),
        ];
        let node = self
            .node
            .config
            .container_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in runtime.into_iter().chain(node) {
            if !env.iter().any(|(key, _)| key == k) {
                env.push((k.into(), v.into()));
            }
        }
        Ok(env)
    }

    pub(super) fn mounts(&self, index: usize) -> Result<Vec<BindMount>, ContainerConfigError> {
        let c = &self.containers[index];
        let env = &c.env;
        let mut out = Vec::new();
        for m in c.spec.volume_mounts.iter().flatten() {
            let source = self.volumes.get(&m.name).ok_or_else(|| {
                ContainerConfigError::VolumeUnavailable {
                    volume: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                }
            })?;
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => Some(p.clone()),
                (_, Some(e)) if !e.is_empty() => Some(expand(e, |n| {
                    env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                })),
                _ => None,
            };
            let source = match sub {
                Some(sub) if sub.split('/').any(|s| s == "..") || sub.starts_with('/') => {
                    return Err(ContainerConfigError::SubPathEscapes(sub));
                }
                Some(sub) => {
                    let p = source.join(sub);
                    if !p.exists() {
                        std::fs::create_dir_all(&p).at(&p)?;
                    }
                    p
                }
                None => source.clone(),
            };
            out.push(BindMount {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: m.read_only == Some(true),
            });
        }
        Ok(out)
    }

    pub(super) async fn on_exit(&mut self, exit: Exit, relisted: bool) {
        let Exit {
            index,
            instance,
            code,
            signal,
            at,
        } = exit;
        let stopped_by_node = self.terminating
            || self
                .containers
                .get(index)
                .is_some_and(|c| c.instance == instance && c.stopping);
        let unseen = !relisted && !stopped_by_node;
        if let Some(wait) = self.node.relist.wait_to_see(unseen, Instant::now()) {
            let relisted = true;
            self.after(wait, Message::Exited { exit, relisted });
            return;
        }
        let policy = self.policy();
        let terminating = self.terminating;
        let backoff_max = self.node.config.backoff_max;
        let backoff_initial = self.node.config.backoff_initial;
        let key = self.key();
        let Some(c) = self
            .containers
            .get_mut(index)
            .filter(|c| c.instance == instance)
        else {
            return;
        };
        let Some(pid) = c.pid.take() else { return };
        c.instance += 1;
        c.stop_probes();
        // Whatever the container's process left behind dies with it, as in a container.
        signal_group(pid, Signal::SIGKILL);
        c.stopping = false;
        let finished_at = at;
        let (started_at, container_id) = match &c.view.state {
            RunState::Running {
                started_at,
                container_id,
            } => (*started_at, container_id.clone()),
            _ => (finished_at, String::new()),
        };
        let t = Terminated::from_exit(code, signal, started_at, finished_at, container_id);
        tracing::info!(pod = %key, container = %c.view.name, exit_code = t.exit_code, signal = ?t.signal, "container exited");
        let exit_code = t.exit_code;
        c.view.state = RunState::Terminated(t.clone());
        c.view.ready = false;
        c.view.started = false;
        self.dirty_since.get_or_insert_with(Instant::now);
        if terminating || !should_restart(&policy, c.view.kind, exit_code) {
            self.reconcile().await;
            return;
        }
        // A container that ran long enough is not crash-looping: start over with a short wait.
        let ran = finished_at.duration_since(started_at).as_secs_f64();
        if ran > 2.0 * backoff_max.as_secs_f64() {
            c.backoff = backoff_initial;
        }
        let delay = c.backoff;
        c.backoff = (c.backoff * 2).min(backoff_max);
        let name = c.view.name.clone();
        let instance = c.instance;
        // The death itself reaches the API first, then the backoff wait.
        self.flush().await;
        let c = &mut self.containers[index];
        c.view.last = Some(t);
        c.view.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {}ms restarting failed container={name} pod={}_{}({})",
                delay.as_millis(),
                self.name,
                self.namespace,
                self.uid
            )),
        };
        self.mark();
        self.after(delay, Message::Retry { index, instance });
    }
}

/// One container of the pod as the worker tracks it: its spec, the view its status is built
/// from, and the process (if one runs).
pub(super) struct PodContainer {
    pub(super) spec: Container,
    pub(super) view: ContainerView,
    /// Changes on every start attempt and exit, so that stale timers and probe results of an
    /// earlier instance are ignored.
    pub(super) instance: u64,
    pub(super) pid: Option<u32>,
    pub(super) env: Vec<(String, String)>,
    pub(super) program: Option<PathBuf>,
    /// Host folder bind-mounted on the container's /tmp.
    pub(super) tmp_dir: PathBuf,
    /// Where the container's stdout and stderr go.
    pub(super) log_file: PathBuf,
    pub(super) backoff: Duration,
    pub(super) attempts: u32,
    pub(super) runs: u32,
    pub(super) probes: Vec<AbortHandle>,
    /// Makes the running readiness probe probe at once (see [`crate::probe::run`]).
    pub(super) readiness_rerun: Option<Arc<Notify>>,
    /// The node is stopping this instance (its exit is then seen at once).
    pub(super) stopping: bool,
}

impl PodContainer {
    pub(super) fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
        self.readiness_rerun = None;
    }
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}
