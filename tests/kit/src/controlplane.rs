//! A real Kubernetes control plane on loopback for tests and the demo: etcd, kube-apiserver
//! (RBAC, service-account issuer, client CA), kube-controller-manager and kube-scheduler,
//! built from `controlplane/` (by the private `build` module) and run as local processes.
//!
//! Library use (tests, the testbed, xtask):
//! ```no_run
//! let cp = hapod_testkit::controlplane::ControlPlane::start(Default::default())?;
//! let status = cp.kubectl().args(["get", "ns"]).status()?;
//! let bob = cp.mint_kubeconfig("bob", &["dev"])?;
//! cp.stop()?; // or drop it
//! # anyhow::Ok(())
//! ```
//!
//! Fault injection (`cargo xtask chaos`): [`ControlPlane::restart`] kills a component and
//! starts it again with the arguments it was first started with, [`ControlPlane::signal`]
//! sends it a signal (SIGSTOP, SIGCONT). Both work on a shared handle.

mod audit;
mod build;
mod cli;
mod pki;
mod probe;

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{target_dir, workspace_root};

pub use audit::PodDeletion;
pub use build::{
    Binaries, COMPONENTS, DEFAULT_KUBERNETES_VERSION, ensure_built, gen_gomod, is_cached,
};
pub use cli::{Cli, env_lines};

/// Controllers kube-controller-manager runs. What a Deployment, ReplicaSet, Service and
/// ServiceAccount need to behave as on a real cluster, plus PodDisruptionBudgets, pod garbage
/// collection and the aggregated `admin`/`edit`/`view` ClusterRoles. `node-lifecycle-controller`
/// stays off: it would taint and evict the pods of a process node whenever that node's
/// heartbeat lags on a loaded CI machine (a real node gets it: [`Options::pod_network`]).
pub const CONTROLLERS: &str = "replicaset-controller,deployment-controller,\
endpointslice-controller,endpointslice-mirroring-controller,endpoints-controller,\
garbage-collector-controller,namespace-controller,serviceaccount-controller,\
serviceaccount-token-controller,disruption-controller,pod-garbage-collector-controller,\
root-ca-certificate-publisher-controller,clusterrole-aggregation-controller";

/// `--service-cluster-ip-range`: the apiserver requires one to allocate Service ClusterIPs
/// from. Nothing ever sends traffic to these addresses (there is no kube-proxy, and tests
/// resolve a Service through its EndpointSlice), so any private range will do.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/24";

/// How long [`ControlPlane::start`] waits for readiness by default.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(180);

const STATE_FILE: &str = "state.json";

/// Where `cargo xtask controlplane ...` keeps its control plane: `<target>/hapod-controlplane`.
pub fn default_dir() -> PathBuf {
    // A clap default cannot fail: without cargo metadata, cargo's own default.
    target_dir()
        .unwrap_or_else(|_| workspace_root().join("target"))
        .join("hapod-controlplane")
}

/// How to start a control plane.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// State directory (pki, etcd data, kubeconfigs, logs, pids). `None`: a fresh directory
    /// under `<target>/hapod-controlplane-tmp/`, removed when the control plane stops
    /// (kept, with its logs, if the thread is panicking: a failing test).
    pub dir: Option<PathBuf>,
    /// Readiness deadline; `None` is 180 s (a cold start on a loaded 2-core machine).
    pub ready_timeout: Option<Duration>,
    /// etcd syncs every commit to disk, as in production (the benchmark). Off by default: the
    /// data is thrown away with the directory, and fsync on a shared CI disk would dominate
    /// the apiserver's bootstrap (hundreds of writes) for no benefit to a test.
    pub etcd_fsync: bool,
    /// kube-apiserver also serves the pod network of a real node: it listens on every address
    /// of the testbed's private namespace (only inside it) and advertises the namespace's own
    /// [`crate::netns::API_ADDRESS`], which the `kubernetes` Service then lists, so that pods
    /// in network namespaces of their own reach it through the Service's ClusterIP as on a
    /// cluster. Off: loopback only, and the Service lists nothing.
    pub pod_network: bool,
}

/// What a state directory records, so that another process (`cargo xtask controlplane stop`)
/// can find and stop the processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: String,
    binaries: PathBuf,
    server: String,
    ports: Ports,
    /// In the file only: a handle keeps its processes in [`ControlPlane::running`], which a
    /// restart changes, and leaves this empty.
    processes: Vec<ProcessRecord>,
    /// The process whose handle stops the control plane when dropped; `None` once detached.
    /// A control plane whose owner died without stopping it (a killed test) is an orphan, and
    /// the next start stops it.
    owner: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProcessRecord {
    name: String,
    pid: i32,
    /// The arguments it was started with, which a restart starts it with again.
    #[serde(default)]
    args: Vec<String>,
}

/// A process of the control plane, for [`ControlPlane::restart`] and [`ControlPlane::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
}

impl Component {
    /// The binary's name, also the name of its log and of its record in the state file.
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
        }
    }
}

/// The processes of a control plane: what the state file lists, in start order (a restarted
/// process keeps its place, so that shutdown still stops etcd last), and, for the handle that
/// started them, their [`Child`] handles in the same order.
#[derive(Default)]
struct Running {
    processes: Vec<ProcessRecord>,
    /// Empty for a handle from [`ControlPlane::attach`].
    children: Vec<Child>,
}

impl Running {
    fn position(&self, component: Component) -> Result<usize> {
        self.processes
            .iter()
            .position(|p| p.name == component.name())
            .with_context(|| format!("{} is not running", component.name()))
    }
}

/// A running control plane. Dropping the handle stops its processes, unless it was
/// [`ControlPlane::detach`]ed.
pub struct ControlPlane {
    dir: PathBuf,
    state: State,
    binaries: Binaries,
    /// The processes; behind a lock, as [`ControlPlane::restart`] replaces one through a
    /// shared handle.
    running: Mutex<Running>,
    /// Started in their own process group (see [`ControlPlane::start_with`]); restarts too.
    detached: bool,
    /// Set for a directory this handle created and removes when it stops.
    temp: Option<tempfile::TempDir>,
    stopped: bool,
}

impl ControlPlane {
    /// Builds (or takes from the cache) the binaries, starts etcd, kube-apiserver,
    /// kube-controller-manager and kube-scheduler on free loopback ports, and waits until
    /// the apiserver is ready, the others are healthy and the `default` ServiceAccount exists.
    /// On any failure, every process started so far is stopped before the error returns.
    pub fn start(options: Options) -> Result<Self> {
        Self::start_with(options, false)
    }

    /// `detached`: for `cargo xtask controlplane start`, whose processes outlive it. They get
    /// their own process group, so that a Ctrl-C in the shell that started them does not
    /// reach them. Attached ones share the caller's group: a Ctrl-C that kills a test run
    /// (before any destructor runs) kills them too.
    fn start_with(options: Options, detached: bool) -> Result<Self> {
        let binaries = ensure_built()?;
        // Free ports are chosen before the components bind them, so another process (another
        // test's control plane) can take one in between; a fresh set of ports fixes that.
        let mut attempt = 1;
        loop {
            match Self::start_once(&options, detached, binaries.clone()) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("a port of the control plane was taken meanwhile; retrying");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(options: &Options, detached: bool, binaries: Binaries) -> Result<Self> {
        let (dir, temp) = match options.dir.clone() {
            Some(dir) => {
                let dir = std::path::absolute(dir)?;
                prepare_dir(&dir)?;
                (dir, None)
            }
            None => {
                let parent = target_dir()?.join("hapod-controlplane-tmp");
                fs::create_dir_all(&parent)?;
                stop_orphans_in(&parent)?;
                let temp = tempfile::Builder::new().prefix("cp-").tempdir_in(&parent)?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let ports = free_ports()?;
        let mut cp = ControlPlane {
            state: State {
                version: binaries.version().to_owned(),
                binaries: binaries.dir().to_path_buf(),
                server: format!("https://127.0.0.1:{}", ports.apiserver),
                ports,
                processes: Vec::new(),
                owner: (!detached).then(std::process::id),
            },
            dir,
            binaries,
            running: Mutex::default(),
            detached,
            temp,
            stopped: false,
        };
        cp.launch(options)?;
        Ok(cp)
    }

    /// A handle on the control plane recorded in `dir` by another process, to stop it or
    /// mint users. Its processes are not checked here; see [`ControlPlane::is_running`].
    /// Dropping this handle stops them too; [`ControlPlane::detach`] it to leave them running.
    pub fn attach(dir: &Path) -> Result<Self> {
        let dir = std::path::absolute(dir)?;
        let mut state = read_state(&dir)?
            .with_context(|| format!("no control plane recorded in {}", dir.display()))?;
        let binaries = Binaries::new(state.binaries.clone(), state.version.clone());
        let running = Running {
            processes: std::mem::take(&mut state.processes),
            children: Vec::new(),
        };
        Ok(ControlPlane {
            dir,
            state,
            binaries,
            running: Mutex::new(running),
            detached: false,
            temp: None,
            stopped: false,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.state.server
    }

    /// The admin kubeconfig (user `admin` in `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The CA that signed the serving certificates of kube-apiserver and the others; what a
    /// pod's in-cluster config must trust (`ca.crt`).
    pub fn ca_file(&self) -> PathBuf {
        self.pki_dir().join(pki::CA_CERT)
    }

    /// The binaries this control plane runs (`kubectl` among them).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Writes `<dir>/users/<user>.kubeconfig` with a fresh client certificate for `user` in
    /// `groups` (at most two), signed by the client CA, and returns its path.
    pub fn mint_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        if user.is_empty() || user.contains(['/', '\0']) || user.starts_with('.') {
            bail!("user name {user:?} cannot name a file");
        }
        let client = pki::mint_client_cert(&self.pki_dir(), user, groups)?;
        let users = self.dir.join("users");
        fs::create_dir_all(&users)?;
        let path = users.join(format!("{user}.kubeconfig"));
        pki::write_kubeconfig(&path, &self.pki_dir(), self.server(), user, &client)?;
        Ok(path)
    }

    /// The CA that signs client certificates (what a kubelet trusts the apiserver by).
    pub fn client_ca_file(&self) -> PathBuf {
        pki::client_ca_cert(&self.pki_dir())
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`, the control plane's own kubectl.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.binaries.path("kubectl"));
        command.arg("--kubeconfig").arg(self.kubeconfig());
        command
    }

    /// Whether every recorded process is alive.
    pub fn is_running(&self) -> bool {
        let running = self.running();
        !running.processes.is_empty()
            && running
                .processes
                .iter()
                .all(|p| process_belongs_to(p.pid, &self.dir))
    }

    /// The recorded processes: (name, pid), in start order.
    pub fn processes(&self) -> Vec<(String, i32)> {
        self.running()
            .processes
            .iter()
            .map(|p| (p.name.clone(), p.pid))
            .collect()
    }

    /// The pod deletions the apiserver accepted so far, with who asked for each, from its
    /// audit log (in the order logged; a restarted apiserver appends to it).
    pub fn pod_deletions(&self) -> Result<Vec<PodDeletion>> {
        audit::pod_deletions(&self.dir.join(audit::LOG))
    }

    /// Sends `signal` to `component` (SIGSTOP to freeze it, SIGCONT to resume it).
    pub fn signal(&self, component: Component, signal: Signal) -> Result<()> {
        let running = self.running();
        let p = &running.processes[running.position(component)?];
        ensure!(
            process_belongs_to(p.pid, &self.dir),
            "{} (pid {}) is not running",
            p.name,
            p.pid
        );
        kill(Pid::from_raw(p.pid), signal)
            .with_context(|| format!("sending {signal} to {} (pid {})", p.name, p.pid))
    }

    /// Kills `component` (SIGKILL, also when it is stopped) and starts it again with the same
    /// arguments (ports, certificates, etcd data), its log continued; returns once it serves
    /// again ([`ControlPlane::wait_ready`]), with the time from the kill. Killing
    /// kube-apiserver cuts every watch and request in flight. Only for the handle that started
    /// the control plane; blocks (`spawn_blocking` from async code).
    pub fn restart(&self, component: Component) -> Result<Duration> {
        let started = Instant::now();
        {
            let mut running = self.running();
            let i = running.position(component)?;
            ensure!(
                running.children.len() == running.processes.len(),
                "only the handle that started the control plane can restart {}",
                component.name()
            );
            let old = &mut running.children[i];
            // SIGKILL; an error means it has exited already, which `wait` reaps.
            let _ = old.kill();
            old.wait()
                .with_context(|| format!("reaping {}", component.name()))?;
            let args = running.processes[i].args.clone();
            let new = self.spawn_process(component.name(), &args, true)?;
            running.processes[i].pid = i32::try_from(new.id())?;
            running.children[i] = new;
            // Recorded at once: `cargo xtask controlplane stop` and orphan cleanup find the
            // new pid.
            self.write_state(&running)?;
        }
        self.wait_ready(component, started + DEFAULT_READY_TIMEOUT)?;
        Ok(started.elapsed())
    }

    /// Waits until `component` serves (kube-apiserver `/readyz`, also for etcd, after the new
    /// etcd listens; the others' `/healthz`), failing with the logs' ends at `deadline` or
    /// when a process this handle started exits. Blocks.
    pub fn wait_ready(&self, component: Component, deadline: Instant) -> Result<()> {
        let p = self.state.ports;
        let check = match component {
            Component::Etcd | Component::KubeApiserver => {
                if component == Component::Etcd {
                    self.wait_listening(p.etcd_client, deadline)?;
                }
                ("kube-apiserver /readyz", p.apiserver, "/readyz")
            }
            Component::KubeControllerManager => (
                "kube-controller-manager /healthz",
                p.controller_manager,
                "/healthz",
            ),
            Component::KubeScheduler => ("kube-scheduler /healthz", p.scheduler, "/healthz"),
        };
        self.wait_for(&self.admin_probe()?, deadline, &[check])
    }

    /// Leaves the processes running after this handle is gone (`cargo xtask controlplane
    /// start`); `cargo xtask controlplane stop` or [`ControlPlane::attach`] stops them later.
    pub fn detach(mut self) {
        self.stopped = true;
        // Only the handle that started the processes owns them; a handle from `attach` must
        // not change what the state records.
        let running = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        if !running.children.is_empty()
            && self.state.owner.take().is_some()
            && let Err(e) = Self::write_state_of(&self.dir, &self.state, running)
        {
            eprintln!(
                "recording the detached control plane in {}: {e:#}",
                self.dir.display()
            );
        }
        // A detached directory outlives this handle, so it must not be a self-removing one.
        if let Some(temp) = self.temp.take() {
            let _ = temp.keep();
        }
    }

    /// Stops every process (SIGTERM, SIGKILL after 10 s), newest first.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    /// The apiserver's `/readyz` answer, as text for `status`.
    fn readyz(&self) -> String {
        let answer = self
            .admin_probe()
            .and_then(|probe| probe.get(self.state.ports.apiserver, "/readyz"));
        match answer {
            Ok(200) => "ready".to_owned(),
            Ok(status) => format!("HTTP {status}"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// A probe with a fresh admin client certificate.
    fn admin_probe(&self) -> Result<probe::Probe> {
        let admin = pki::mint_client_cert(&self.pki_dir(), "admin", &["system:masters"])?;
        probe::Probe::new(&self.ca_file(), &admin)
    }

    fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The processes, also after a panic while they were locked (they are only ever replaced
    /// whole).
    fn running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Records the state with `running`'s processes.
    fn write_state(&self, running: &Running) -> Result<()> {
        Self::write_state_of(&self.dir, &self.state, running)
    }

    fn write_state_of(dir: &Path, state: &State, running: &Running) -> Result<()> {
        let state = State {
            processes: running.processes.clone(),
            ..state.clone()
        };
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
        fs::rename(tmp, dir.join(STATE_FILE))?;
        Ok(())
    }

    /// Generates certificates and kubeconfigs, spawns the four processes and waits until they
    /// are ready. etcd and kube-apiserver start together (the apiserver retries etcd);
    /// kube-controller-manager and kube-scheduler only once the apiserver is ready, because
    /// they exit if it cannot answer their delegated-authentication lookup at startup.
    fn launch(&mut self, options: &Options) -> Result<()> {
        let started = Instant::now();
        let deadline = started + options.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
        let pki = self.pki_dir();
        pki::generate(&pki)?;
        fs::create_dir_all(self.dir.join("logs"))?;
        for (name, user, groups) in [
            ("admin", "admin", &["system:masters"][..]),
            (
                "kube-controller-manager",
                "system:kube-controller-manager",
                &[][..],
            ),
            ("kube-scheduler", "system:kube-scheduler", &[][..]),
        ] {
            let client = pki::mint_client_cert(&pki, user, groups)?;
            let path = self.dir.join(format!("{name}.kubeconfig"));
            pki::write_kubeconfig(&path, &pki, self.server(), user, &client)?;
        }
        self.write_state(&Running::default())?;
        let probe = self.admin_probe()?;

        let p = self.state.ports;
        let dir = self.dir.clone();
        let path = |relative: &str| dir.join(relative).display().to_string();
        let etcd_client = format!("http://127.0.0.1:{}", p.etcd_client);
        let etcd_peer = format!("http://127.0.0.1:{}", p.etcd_peer);
        self.spawn(
            "etcd",
            &[
                "--name=hapod".into(),
                format!("--data-dir={}", path("etcd")),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=hapod={etcd_peer}"),
                "--log-level=warn".into(),
            ]
            .into_iter()
            .chain((!options.etcd_fsync).then(|| "--unsafe-no-fsync".to_string()))
            .collect::<Vec<_>>(),
        )?;

        let serving = [
            format!(
                "--tls-cert-file={}",
                path(&format!("pki/{}", pki::SERVING_CERT))
            ),
            format!(
                "--tls-private-key-file={}",
                path(&format!("pki/{}", pki::SERVING_KEY))
            ),
        ];
        let sa_key = path(&format!("pki/{}", pki::SERVICE_ACCOUNT_KEY));
        let listen: [String; 2] = if options.pod_network {
            [
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={}", crate::netns::API_ADDRESS),
            ]
        } else {
            [
                "--bind-address=127.0.0.1".into(),
                // Loopback, so that nothing is ever told to reach the apiserver at a host's
                // network address. Endpoints may not hold loopback addresses, so the
                // `kubernetes` Service gets no endpoints (the reconciler is off instead of
                // failing a write every ten seconds); pods reach the apiserver at 127.0.0.1.
                "--advertise-address=127.0.0.1".into(),
            ]
        };
        let mut apiserver = vec![format!("--etcd-servers={etcd_client}")];
        apiserver.extend(listen);
        if options.pod_network {
            // Its identity towards a real node's kubelet (`kubectl logs`, `exec`): the kubelet
            // trusts the client CA.
            let client = pki::mint_client_cert(&pki, "kube-apiserver", &["system:masters"])?;
            let (cert, key) = (
                pki.join("kubelet-client.crt"),
                pki.join("kubelet-client.key"),
            );
            fs::write(&cert, client.cert_pem)?;
            pki::write_private(&key, &client.key_pem)?;
            apiserver.extend([
                format!("--kubelet-client-certificate={}", cert.display()),
                format!("--kubelet-client-key={}", key.display()),
            ]);
        } else {
            apiserver.push("--endpoint-reconciler-type=none".into());
        }
        apiserver.extend([
            format!("--secure-port={}", p.apiserver),
            format!("--client-ca-file={}", pki::client_ca_cert(&pki).display()),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                path(&format!("pki/{}", pki::SERVICE_ACCOUNT_PUBLIC_KEY))
            ),
            format!("--service-account-signing-key-file={sa_key}"),
            "--profiling=false".into(),
            // Who deleted each pod, so that a check can tell hapod's deletions from the
            // ReplicaSet controller's (see `pod_deletions`).
            format!("--audit-policy-file={}", path(audit::POLICY)),
            format!("--audit-log-path={}", path(audit::LOG)),
            "--audit-log-format=json".into(),
        ]);
        fs::write(self.dir.join(audit::POLICY), audit::POLICY_YAML)?;
        apiserver.extend(serving.iter().cloned());
        self.spawn("kube-apiserver", &apiserver)?;
        self.wait_for(
            &probe,
            deadline,
            &[("kube-apiserver /readyz", p.apiserver, "/readyz")],
        )?;
        let apiserver_ready = started.elapsed();

        let component = |name: &str, port: u16| {
            let kubeconfig = path(&format!("{name}.kubeconfig"));
            let mut args = vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                // A single instance: leader election would only add a Lease round trip.
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ];
            args.extend(serving.iter().cloned());
            args
        };
        let mut controller_manager = component("kube-controller-manager", p.controller_manager);
        controller_manager.extend([
            if options.pod_network {
                // A real kubelet registers its Node tainted not-ready; this controller lifts
                // the taint once the Node is Ready (and manages the Node as on a cluster).
                format!("--controllers={CONTROLLERS},node-lifecycle-controller")
            } else {
                format!("--controllers={CONTROLLERS}")
            },
            format!("--service-account-private-key-file={sa_key}"),
            format!("--root-ca-file={}", path(&format!("pki/{}", pki::CA_CERT))),
            // Each controller acts as its own ServiceAccount, so RBAC applies as on a real
            // cluster instead of the controller manager's superuser-like identity.
            "--use-service-account-credentials=true".into(),
        ]);
        self.spawn("kube-controller-manager", &controller_manager)?;
        let scheduler = component("kube-scheduler", p.scheduler);
        self.spawn("kube-scheduler", &scheduler)?;
        self.wait_for(
            &probe,
            deadline,
            &[
                (
                    "kube-controller-manager /healthz",
                    p.controller_manager,
                    "/healthz",
                ),
                ("kube-scheduler /healthz", p.scheduler, "/healthz"),
                // Created by the controller manager: the last piece a pod needs.
                (
                    "ServiceAccount default/default",
                    p.apiserver,
                    "/api/v1/namespaces/default/serviceaccounts/default",
                ),
            ],
        )?;
        eprintln!(
            "control plane {} ready in {:.1} s (kube-apiserver after {:.1} s) at {}, state in {}",
            self.state.version,
            started.elapsed().as_secs_f64(),
            apiserver_ready.as_secs_f64(),
            self.server(),
            self.dir.display()
        );
        Ok(())
    }

    fn spawn(&mut self, name: &str, args: &[String]) -> Result<()> {
        let child = self.spawn_process(name, args, false)?;
        let running = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        running.processes.push(ProcessRecord {
            name: name.to_owned(),
            pid: i32::try_from(child.id())?,
            args: args.to_vec(),
        });
        running.children.push(child);
        // Recorded before anything can fail, so that `stop` finds it whatever happens next.
        Self::write_state_of(&self.dir, &self.state, running)
    }

    /// Starts `name` with `args`, its output to its log (appended to for a restart).
    fn spawn_process(&self, name: &str, args: &[String], restart: bool) -> Result<Child> {
        let log = File::options()
            .create(true)
            .write(true)
            .append(restart)
            .truncate(!restart)
            .open(self.log_path(name))?;
        let mut command = Command::new(self.binaries.path(name));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.detached {
            command.process_group(0);
        }
        command.spawn().with_context(|| format!("starting {name}"))
    }

    /// Waits until something accepts TCP connections on the loopback `port`.
    fn wait_listening(&self, port: u16, deadline: Instant) -> Result<()> {
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "nothing listens on port {port} in time\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Polls each `(what, port, path)` in turn until it answers 200.
    fn wait_for(
        &self,
        probe: &probe::Probe,
        deadline: Instant,
        checks: &[(&str, u16, &str)],
    ) -> Result<()> {
        let mut pending = checks;
        while let Some((what, port, path)) = pending.first() {
            self.check_alive()?;
            let last_error = match probe.get(*port, path) {
                Ok(200) => {
                    pending = &pending[1..];
                    continue;
                }
                Ok(status) => format!("{what}: HTTP {status}"),
                Err(e) => format!("{what}: {e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "control plane in {} not ready in time; last check {last_error}\n{}",
                    self.dir.display(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Fails, with the log's end, if a process this handle started has exited.
    fn check_alive(&self) -> Result<()> {
        let mut running = self.running();
        let Running {
            processes,
            children,
        } = &mut *running;
        for (child, record) in children.iter_mut().zip(processes.iter()) {
            if let Some(status) = child.try_wait()? {
                let log = self.log_path(&record.name);
                bail!(
                    "{} exited during start ({status}); end of {}:\n{}",
                    record.name,
                    log.display(),
                    tail(&log, 30)
                );
            }
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        self.running()
            .processes
            .iter()
            .map(|p| {
                format!(
                    "--- end of {}:\n{}",
                    self.log_path(&p.name).display(),
                    tail(&self.log_path(&p.name), 15)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        // Newest first, one at a time: the scheduler and controller manager before the
        // apiserver, the apiserver before etcd. Stopped together, the apiserver loses etcd
        // mid-shutdown and hangs in retries until it is killed. (A restarted process keeps its
        // place in the list.)
        let running = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        for (i, p) in running.processes.iter().enumerate().rev() {
            let pid = Pid::from_raw(p.pid);
            if !process_belongs_to(p.pid, &self.dir) {
                continue;
            }
            // A stopped process (a fault) ignores SIGTERM until continued.
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_belongs_to(p.pid, &self.dir) {
                if Instant::now() >= deadline {
                    let _ = kill(pid, Signal::SIGKILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Reap it if it is our child (a zombie already counts as gone above).
            if let Some(child) = running.children.get_mut(i) {
                let _ = child.wait();
            }
        }
        running.processes.clear();
        if self.dir.join(STATE_FILE).exists() {
            Self::write_state_of(&self.dir, &self.state, running)?;
        }
        if let Some(temp) = self.temp.take() {
            if std::thread::panicking() {
                eprintln!(
                    "keeping the control plane's directory for inspection: {}",
                    temp.keep().display()
                );
            } else {
                temp.close()?;
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!(
                "stopping the control plane in {}: {e:#}",
                self.dir.display()
            );
        }
    }
}

/// Whether `pid` is alive and is one of ours: its command line names a path in `dir` (every
/// process gets its certificates or data from there), which guards against a recycled pid.
fn process_belongs_to(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line: it is dead for our purposes.
    let needle = dir.as_os_str().as_encoded_bytes();
    !cmdline.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Whether the control plane in `dir` has live processes and an owner that died without
/// stopping them.
fn is_orphan(dir: &Path, state: &State) -> bool {
    state
        .owner
        .is_some_and(|owner| !Path::new(&format!("/proc/{owner}")).exists())
        && state
            .processes
            .iter()
            .any(|p| process_belongs_to(p.pid, dir))
}

/// Stops the orphaned control planes among the directories in `parent`; their directories
/// stay, with the logs.
fn stop_orphans_in(parent: &Path) -> Result<()> {
    for entry in fs::read_dir(parent)? {
        let dir = entry?.path();
        if let Ok(Some(state)) = read_state(&dir)
            && is_orphan(&dir, &state)
        {
            eprintln!("stopping an orphaned control plane in {}", dir.display());
            ControlPlane::attach(&dir)?.stop()?;
        }
    }
    Ok(())
}

/// Creates `dir`, or empties one left by a stopped (or orphaned) control plane. Refuses a
/// directory with a live control plane, and one that holds something else.
fn prepare_dir(dir: &Path) -> Result<()> {
    if let Some(state) = read_state(dir)? {
        if is_orphan(dir, &state) {
            eprintln!("stopping an orphaned control plane in {}", dir.display());
            ControlPlane::attach(dir)?.stop()?;
        } else if state
            .processes
            .iter()
            .any(|p| process_belongs_to(p.pid, dir))
        {
            bail!(
                "a control plane is already running in {}; stop it first (`cargo xtask controlplane stop`)",
                dir.display()
            );
        }
        fs::remove_dir_all(dir)?;
    } else if dir.exists() && fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty and holds no control plane; refusing to use it",
            dir.display()
        );
    }
    fs::create_dir_all(dir)?;
    Ok(())
}

fn read_state(dir: &Path) -> Result<Option<State>> {
    match fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("parsing {}", dir.join(STATE_FILE).display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Five distinct free loopback ports. They are free when chosen and could be taken before
/// the component binds them; a clash makes the start fail with the component's log.
fn free_ports() -> Result<Ports> {
    let listeners = (0..5)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let port = |i: usize| -> Result<u16> { Ok(listeners[i].local_addr()?.port()) };
    Ok(Ports {
        etcd_client: port(0)?,
        etcd_peer: port(1)?,
        apiserver: port(2)?,
        controller_manager: port(3)?,
        scheduler: port(4)?,
    })
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restarted component is recorded under its new pid in its old place, and a stop
    /// through the state file (`cargo xtask controlplane stop`) finds every process. Starts a
    /// real control plane (about 15 s); skipped when its binaries are not built.
    #[test]
    fn a_restarted_component_is_recorded_and_stopped() -> Result<()> {
        if !is_cached() {
            eprintln!("the control plane is not built (`cargo xtask controlplane build`); skipped");
            return Ok(());
        }
        let cp = ControlPlane::start(Options::default())?;
        let dir = cp.dir().to_path_buf();
        let recorded = || -> Result<Vec<(String, i32)>> {
            let state = read_state(&dir)?.context("no state file")?;
            Ok(state
                .processes
                .into_iter()
                .map(|p| (p.name, p.pid))
                .collect())
        };
        let before = recorded()?;
        for component in [Component::KubeApiserver, Component::Etcd] {
            cp.restart(component)?;
        }
        cp.signal(Component::Etcd, Signal::SIGSTOP)?;
        cp.signal(Component::Etcd, Signal::SIGCONT)?;
        let after = recorded()?;
        assert_eq!(after, cp.processes());
        let names = |v: &[(String, i32)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&after), names(&before), "the start order is kept");
        for ((name, old), (_, new)) in before.iter().zip(&after) {
            let restarted = ["etcd", "kube-apiserver"].contains(&name.as_str());
            assert_eq!(old != new, restarted, "{name}: pid {old} then {new}");
            assert!(
                process_belongs_to(*new, &dir),
                "{name} (pid {new}) is not running"
            );
        }
        assert!(cp.is_running());
        ControlPlane::attach(&dir)?.stop()?;
        for (name, pid) in &after {
            assert!(
                !process_belongs_to(*pid, &dir),
                "{name} (pid {pid}) still runs"
            );
        }
        Ok(())
    }
}
