//! The testbed's real node: containerd, runc and the CNI plugins ([`build`]), the kubelet and
//! kube-proxy (the control plane's multi-call binary), all inside the testbed's private
//! network namespace, running hapod's images built from `deploy/docker/` ([`image`]).
//!
//! - Pods get IPs from [`crate::netns::REAL_NODE_POD_CIDR`] on the CNI bridge
//!   [`BRIDGE`] (gateway `.1`), in network namespaces of their own.
//! - kube-apiserver listens on the namespace's [`crate::netns::API_ADDRESS`] too, which the
//!   `kubernetes` Service lists; kube-proxy (nftables mode) forwards ClusterIPs, so pods reach
//!   the API as on a cluster and a request to a Service's ClusterIP reaches its endpoint.
//! - The machine has cgroup v1 only: the kubelet runs with `failCgroupV1: false` and the
//!   `cgroupfs` driver, and runc with containerd's `SystemdCgroup = false`.
//!
//! Everything it starts is stopped when the [`RealNode`] is dropped.

pub mod build;
pub mod image;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::controlplane::ControlPlane;

pub use build::{Runtime, ensure_built, is_cached};

/// Node name of the real node.
pub const REAL_NODE: &str = "hapod-real-node";
/// The CNI bridge of the real node's pods.
pub const BRIDGE: &str = "hapod0";
/// The sandbox ("pause") image, built from `tools/hapod-pause`.
pub const PAUSE_IMAGE: &str = "hapod.io/testbed/pause:1";
/// The kubelet's port on [`crate::netns::API_ADDRESS`] (the apiserver's `kubectl logs`).
const KUBELET_PORT: u16 = 10250;

/// What the real node needs from the testbed.
pub struct Config<'a> {
    pub runtime: &'a Runtime,
    pub control_plane: &'a ControlPlane,
    /// Folder of the workspace binaries the images are made of (and `hapod-pause`).
    pub bin_dir: &'a Path,
    /// Where its state and logs go.
    pub dir: PathBuf,
    /// Images to build and import: `deploy/docker/<name>.Dockerfile` each.
    pub images: &'a [&'a str],
    /// kube-proxy's `nftables.minSyncPeriod` (`None`: its default, 1 s): how soon after its
    /// last sync it applies an EndpointSlice change.
    pub kube_proxy_min_sync: Option<Duration>,
}

/// containerd, the kubelet and kube-proxy of one real node.
pub struct RealNode {
    dir: PathBuf,
    /// The kubelet's `cgroupRoot`: every pod's cgroups are below it, in each hierarchy.
    cgroup_root: String,
    /// (name, process), in start order; stopped in reverse.
    processes: Vec<(&'static str, Child)>,
    containerd_socket: PathBuf,
    ctr: PathBuf,
    /// The thread of [`RealNode::link_files`] and what stops it.
    linker: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl RealNode {
    /// Starts containerd, imports the images, starts the kubelet and kube-proxy. Returns once
    /// the processes run; [`crate::testbed`] waits for the Node to be Ready.
    pub fn start(config: Config<'_>) -> Result<RealNode> {
        let dir = std::path::absolute(&config.dir)?;
        fs::create_dir_all(&dir)?;
        set_up_network()?;
        stop_orphaned_pods();
        let mut node = RealNode {
            cgroup_root: format!("/{CGROUP_ROOT_PREFIX}{}", std::process::id()),
            containerd_socket: dir.join("containerd/containerd.sock"),
            ctr: config.runtime.path("ctr"),
            dir,
            processes: Vec::new(),
            linker: None,
        };
        node.start_containerd(config.runtime)?;
        node.import_images(config.bin_dir, config.images)?;
        node.start_kubelet(config.control_plane)?;
        node.start_kube_proxy(config.control_plane, config.kube_proxy_min_sync)?;
        Ok(node)
    }

    /// The folder of its state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What a container of `pod` wrote so far (every start of it, in order), from the
    /// kubelet's pod logs (`<ns>_<name>_<uid>/<container>/<restart>.log`, CRI format: time,
    /// stream, tag, then the line).
    pub fn container_log(&self, pod: &Pod, container: &str) -> Result<String> {
        let folder = self.dir.join("pod-logs").join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default()
        ));
        let folder = folder.join(container);
        let mut files: Vec<(u32, PathBuf)> = fs::read_dir(&folder)
            .with_context(|| format!("reading {}", folder.display()))?
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let restart = path.file_stem()?.to_str()?.parse().ok()?;
                (path.extension()? == "log").then_some((restart, path))
            })
            .collect();
        files.sort();
        let mut log = String::new();
        for (_, path) in files {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            for line in text.lines() {
                // "2026-12-02T11:54:41.770966Z stdout F the line"
                log.push_str(line.splitn(4, ' ').nth(3).unwrap_or_default());
                log.push('\n');
            }
        }
        Ok(log)
    }

    /// The host folder of a container's `/tmp`: the emptyDir `tmp-<container>` that
    /// `deploy/components/writable-tmp` mounts there (the testbed applies it on this node).
    pub fn container_tmp(&self, pod: &Pod, container: &str) -> PathBuf {
        empty_dir(
            &self
                .dir
                .join("kubelet/pods")
                .join(pod.uid().unwrap_or_default()),
            &format!("tmp-{container}"),
        )
    }

    /// Until the node stops, hard-links every file that a pod writes into `subdir` of its
    /// emptyDir `volume` into a folder, which it returns (every 20 ms): the link keeps the
    /// file, and what the pod appends to it, after the kubelet removes the pod's volumes. The
    /// folder is inside the kubelet's root, which the kubelet mounts on itself: a hard link
    /// cannot cross a mount.
    pub fn link_files(&mut self, volume: &str, subdir: &str) -> Result<PathBuf> {
        let root = self.dir.join("kubelet");
        let pods = root.join("pods");
        let into = root.join("hapod-links").join(volume);
        fs::create_dir_all(&into)?;
        let (volume, subdir) = (volume.to_owned(), subdir.to_owned());
        let linked = into.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                for pod in fs::read_dir(&pods).into_iter().flatten().flatten() {
                    let files = fs::read_dir(empty_dir(&pod.path(), &volume).join(&subdir));
                    for file in files.into_iter().flatten().flatten() {
                        let link = linked.join(file.file_name());
                        if !link.exists() {
                            // A file removed meanwhile is simply not linked.
                            let _ = fs::hard_link(file.path(), link);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        self.linker = Some((stop, thread));
        Ok(into)
    }

    /// A process's log (`containerd`, `kubelet`, `kube-proxy`).
    pub fn log_path(&self, process: &str) -> PathBuf {
        self.dir.join(format!("{process}.log"))
    }

    /// Fails with the process's log tail if one of the node's processes has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.processes {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} of the real node exited ({status}):\n{}",
                    crate::testbed::tail(&self.dir.join(format!("{name}.log")), 30)
                );
            }
        }
        Ok(())
    }

    /// Starts `command` as the node's process `name`, its output to its log.
    fn spawn(&mut self, name: &'static str, mut command: Command) -> Result<()> {
        let log = fs::File::create(self.log_path(name))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.processes.push((name, child));
        Ok(())
    }

    fn start_containerd(&mut self, runtime: &Runtime) -> Result<()> {
        let root = self.dir.join("containerd");
        let cni_conf = self.dir.join("cni");
        fs::create_dir_all(&cni_conf)?;
        fs::write(cni_conf.join("10-hapod.conflist"), cni_config())?;
        let config = root.join("config.toml");
        fs::create_dir_all(&root)?;
        fs::write(
            &config,
            containerd_config(&root, &self.containerd_socket, runtime, &cni_conf),
        )?;
        // The shim finds runc, and containerd the shim, on PATH.
        let path = format!(
            "{}:{}",
            runtime.dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut containerd = Command::new(runtime.path("containerd"));
        containerd.arg("--config").arg(&config).env("PATH", path);
        self.spawn("containerd", containerd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.containerd_socket.exists() {
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "containerd did not open {} in 30 s:\n{}",
                self.containerd_socket.display(),
                crate::testbed::tail(&self.log_path("containerd"), 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Builds each image's OCI archive and imports it into containerd's `k8s.io` namespace
    /// (the kubelet's), where `imagePullPolicy: IfNotPresent` finds it.
    fn import_images(&self, bin_dir: &Path, images: &[&str]) -> Result<()> {
        let archives = self.dir.join("images");
        fs::create_dir_all(&archives)?;
        let pause = image::Stage {
            copies: vec![("hapod-pause".into(), "/pause".into())],
            user: Some("65535:65535".into()),
            exposed: vec![],
            entrypoint: vec!["/pause".into()],
        };
        let mut all = vec![(PAUSE_IMAGE.to_owned(), pause)];
        for name in images {
            all.push((image::reference(name), image::dockerfile_stage(name)?));
        }
        for (reference, stage) in &all {
            let file_name = reference.replace(['/', ':'], "_");
            let archive = archives.join(format!("{file_name}.tar"));
            image::write_archive(reference, stage, bin_dir, &archive)
                .with_context(|| format!("building the image {reference}"))?;
            let out = Command::new(&self.ctr)
                .arg("--address")
                .arg(&self.containerd_socket)
                .args(["--namespace", "k8s.io", "images", "import", "--local"])
                .arg(&archive)
                .output()
                .context("running ctr")?;
            ensure!(
                out.status.success(),
                "ctr images import {} failed: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn start_kubelet(&mut self, control_plane: &ControlPlane) -> Result<()> {
        let kubeconfig = control_plane
            .mint_kubeconfig(&format!("system:node:{REAL_NODE}"), &["system:nodes"])?;
        let root = self.dir.join("kubelet");
        fs::create_dir_all(&root)?;
        create_cgroup_root(&self.cgroup_root)?;
        let config = self.dir.join("kubelet.yaml");
        fs::write(
            &config,
            kubelet_config(
                &self.containerd_socket,
                &control_plane.client_ca_file(),
                &self.cgroup_root,
                &self.dir.join("pod-logs"),
            ),
        )?;
        let args = vec![
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", root.display()),
            format!("--cert-dir={}", root.join("pki").display()),
            format!("--hostname-override={REAL_NODE}"),
            format!("--node-ip={}", crate::netns::API_ADDRESS),
            "--v=1".into(),
        ];
        let mut kubelet = Command::new(control_plane.binaries().path("kubelet"));
        kubelet.args(args);
        self.spawn("kubelet", kubelet)
    }

    fn start_kube_proxy(
        &mut self,
        control_plane: &ControlPlane,
        min_sync: Option<Duration>,
    ) -> Result<()> {
        // system:kube-proxy is bound to system:node-proxier by Kubernetes' default policy.
        let kubeconfig = control_plane.mint_kubeconfig("system:kube-proxy", &[])?;
        let config = self.dir.join("kube-proxy.yaml");
        fs::write(&config, kube_proxy_config(&kubeconfig, min_sync))?;
        let mut kube_proxy = Command::new(control_plane.binaries().path("kube-proxy"));
        kube_proxy.arg(format!("--config={}", config.display()));
        self.spawn("kube-proxy", kube_proxy)
    }

    /// Stops kube-proxy and the kubelet, kills every container (their processes outlive the
    /// kubelet and containerd by design), stops containerd and its shims, and removes the
    /// mounts, cgroups and bridge they made.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.linker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        while let Some((name, mut child)) = self.processes.pop() {
            if name == "containerd" {
                kill_cgroup_tree(&self.cgroup_root);
            }
            crate::testbed::stop_child(&mut child, name, Duration::from_secs(10));
        }
        kill_cgroup_tree(&self.cgroup_root);
        kill_processes_naming(&self.dir);
        unmount_below(&self.dir);
        remove_cgroup_tree(&self.cgroup_root);
        remove_pod_links();
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The host folder of the emptyDir `volume` of the pod whose kubelet folder is `pod_dir`.
fn empty_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir.join("volumes/kubernetes.io~empty-dir").join(volume)
}

/// What the pod network needs inside the private namespace: bridged pod traffic passes
/// netfilter (a pod reaching a Service whose endpoint is on the same bridge), the namespace
/// routes between the bridge and `lo`, and a route for the ClusterIPs, so that the
/// namespace's own requests to a Service get as far as kube-proxy's rules (which send them to
/// a pod; the namespace has no other route).
fn set_up_network() -> Result<()> {
    for (path, value) in [
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
    ] {
        fs::write(path, value).with_context(|| format!("setting {path} (needs root)"))?;
    }
    let route = [
        "route",
        "replace",
        crate::controlplane::SERVICE_CLUSTER_IP_RANGE,
        "dev",
        "lo",
    ];
    let status = Command::new("ip")
        .args(route)
        .status()
        .context("running ip (iproute2)")?;
    ensure!(status.success(), "ip {} failed ({status})", route.join(" "));
    Ok(())
}

/// Deletes the pods' veths (a pair goes with either end) and the bridge: the private
/// namespace may run a process node next, which wants `lo` alone.
fn remove_pod_links() {
    let listed = Command::new("ip")
        .args(["-o", "link", "show", "master", BRIDGE])
        .stderr(Stdio::null())
        .output();
    let text = listed.map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    // "7: veth1234abcd@if2: <BROADCAST,...> ..."
    for line in text.unwrap_or_default().lines() {
        if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
            // Gone already when its pod's namespace went first.
            let _ = Command::new("ip")
                .args(["link", "delete", name])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = Command::new("ip")
        .args(["link", "delete", BRIDGE])
        .stderr(Stdio::null())
        .status();
}

/// The prefix of a node's cgroup root; the testbed process's PID follows.
const CGROUP_ROOT_PREFIX: &str = "hapod-real-node-";

/// Kills and removes the pods of real nodes whose testbed process is gone (killed before it
/// could stop them: a container outlives its kubelet and containerd by design).
fn stop_orphaned_pods() {
    let Ok(roots) = fs::read_dir("/sys/fs/cgroup/pids") else {
        return;
    };
    for root in roots.flatten() {
        let name = root.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(CGROUP_ROOT_PREFIX) else {
            continue;
        };
        if pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        {
            let cgroup_root = format!("/{name}");
            kill_cgroup_tree(&cgroup_root);
            remove_cgroup_tree(&cgroup_root);
        }
    }
}

/// The folders of `cgroup_root` in every cgroup v1 hierarchy.
fn cgroup_dirs(cgroup_root: &str) -> Vec<PathBuf> {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    hierarchies
        .flatten()
        .map(|h| h.path().join(cgroup_root.trim_start_matches('/')))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Creates `cgroup_root` in every cgroup v1 hierarchy (the kubelet requires it), with the
/// machine's CPUs and memory nodes in the cpuset hierarchy (a new cpuset has none).
fn create_cgroup_root(cgroup_root: &str) -> Result<()> {
    for hierarchy in fs::read_dir("/sys/fs/cgroup").context("listing /sys/fs/cgroup")? {
        let hierarchy = hierarchy?.path();
        let dir = hierarchy.join(cgroup_root.trim_start_matches('/'));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = fs::read_to_string(hierarchy.join(file)) {
                fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("writing {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Every folder below (and including) `dir`, deepest first.
fn folders_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(folders_deepest_first(&entry.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// SIGKILLs every process in the cgroups below `cgroup_root` (the pods' containers), until
/// none is left or 5 s passed.
fn kill_cgroup_tree(cgroup_root: &str) {
    let Some(pids_hierarchy) = cgroup_dirs(cgroup_root)
        .into_iter()
        .find(|dir| dir.starts_with("/sys/fs/cgroup/pids"))
    else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = folders_deepest_first(&pids_hierarchy)
            .iter()
            .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|procs| {
                procs
                    .lines()
                    .filter_map(|pid| pid.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the (empty) cgroups below `cgroup_root`, in every hierarchy.
fn remove_cgroup_tree(cgroup_root: &str) {
    for dir in cgroup_dirs(cgroup_root) {
        for folder in folders_deepest_first(&dir) {
            let _ = fs::remove_dir(folder);
        }
    }
}

/// Kills the processes whose command line names `dir` (containerd's shims are started with
/// paths inside it).
fn kill_processes_naming(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid != std::process::id() as i32 && String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Detaches every mount at or below `dir` (the kubelet's volumes and root, containerd's
/// container root filesystems and shared memory), deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // The fifth field is the mount point (spaces and the like escaped as octal).
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn cni_config() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "hapod",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                // Service traffic from a pod back to itself.
                "hairpinMode": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": crate::netns::REAL_NODE_POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

fn containerd_config(root: &Path, socket: &Path, runtime: &Runtime, cni_conf: &Path) -> String {
    format!(
        r#"version = 3
root = "{root}/root"
state = "{root}/state"

[grpc]
  address = "{socket}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"

[plugins.'io.containerd.cri.v1.runtime']
  # The sandbox of the project's machines keeps CAP_SYS_RESOURCE from root: no OOM score
  # below containerd's own (0) can be set, so none is asked for.
  restrict_oom_score_adj = true
  # The pods' network namespaces under its state folder, which stopping the node unmounts
  # (their veths go with them), rather than in the machine's /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        # cgroup v1 with cgroupfs, as the kubelet's cgroupDriver.
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
"#,
        root = root.display(),
        socket = socket.display(),
        pause = PAUSE_IMAGE,
        runc = runtime.path("runc").display(),
        cni_bin = runtime.cni_dir().display(),
        cni_conf = cni_conf.display(),
    )
}

fn kubelet_config(
    containerd_socket: &Path,
    client_ca: &Path,
    cgroup_root: &str,
    pod_logs: &Path,
) -> String {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // This machine mounts cgroup v1 only; Kubernetes 1.35+ refuses it unless told.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        // The pods' cgroups under a root of this node's own, which `stop` empties and removes.
        "cgroupRoot": cgroup_root,
        "podLogsDir": pod_logs.display().to_string(),
        "containerRuntimeEndpoint": format!("unix://{}", containerd_socket.display()),
        "address": crate::netns::API_ADDRESS,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        // The apiserver authenticates with a certificate of the control plane's client CA.
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": false},
            "x509": {"clientCAFile": client_ca.display().to_string()},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "podCIDR": crate::netns::REAL_NODE_POD_CIDR,
        "failSwapOn": false,
        // Its own OOM score stays at 0 (lowering it needs CAP_SYS_RESOURCE, see containerd's
        // restrict_oom_score_adj).
        "oomScoreAdj": 0,
        // No cluster DNS in the testbed: pods keep no resolver at all rather than the
        // machine's (their traffic must stay in the private namespace).
        "resolvConf": "",
        "serializeImagePulls": false,
        // The machine's disk is shared and may be fuller than a node's; images are imported,
        // never pulled again, so nothing may be evicted or collected for space.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 250,
    })
    .to_string()
}

fn kube_proxy_config(kubeconfig: &Path, min_sync: Option<Duration>) -> String {
    let mut config = serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": {"kubeconfig": kubeconfig.display().to_string()},
        "hostnameOverride": REAL_NODE,
        "clusterCIDR": crate::netns::REAL_NODE_POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        // Leave the machine's conntrack table size alone (a sysctl outside the namespace).
        "conntrack": {"maxPerCore": 0},
    });
    if let Some(period) = min_sync {
        config["nftables"] =
            serde_json::json!({"minSyncPeriod": format!("{}ms", period.as_millis())});
    }
    config.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_keeps_its_default_sync_period_unless_told() {
        let default: serde_json::Value =
            serde_json::from_str(&kube_proxy_config(Path::new("/k"), None)).unwrap();
        assert!(default.get("nftables").is_none());
        let fast: serde_json::Value = serde_json::from_str(&kube_proxy_config(
            Path::new("/k"),
            Some(Duration::from_millis(50)),
        ))
        .unwrap();
        assert_eq!(fast["nftables"]["minSyncPeriod"], "50ms");
        assert_eq!(fast["mode"], "nftables");
    }
}
