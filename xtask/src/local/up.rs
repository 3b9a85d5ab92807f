//! `cargo xtask up`: starts the local cluster (see the module above) and prints the lines to
//! `eval`. Run again while it is up, it prints them again.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use super::{LOG_FILE, PID_FILE, STATE_FILE, SUPERVISE_ARG, State};
use hapod_testkit::testbed::{self, Options, Profile, Testbed, tail};

/// Bound of a start: control plane (up to 180 s on a loaded machine), node, settling.
const START_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    /// Build and run release binaries.
    #[arg(long)]
    pub release: bool,
    /// Do not build (the control plane and the workspace binaries must be built already).
    #[arg(long)]
    pub no_build: bool,
    /// Internal: be the supervisor that holds the testbed.
    #[arg(long = "supervise", hide = true)]
    pub supervise: bool,
}

impl Cli {
    pub fn run(self) -> Result<()> {
        let dir = super::state_dir()?;
        if self.supervise {
            return supervise(&dir, self.profile());
        }
        if let Some(pid) = super::supervisor(&dir) {
            let (_, state) = super::running(&dir)?;
            eprintln!("the local cluster is already up (supervisor pid {pid})");
            print!("{}", state.env_lines());
            return Ok(());
        }
        if dir.exists() {
            // A supervisor that died (machine rebooted, killed): its processes are gone.
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the stale {}", dir.display()))?;
        }
        if !self.no_build {
            hapod_testkit::controlplane::ensure_built().context("building the control plane")?;
            testbed::build_binaries(self.profile(), true)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut child = self.spawn_supervisor(&dir)?;
        std::fs::write(dir.join(PID_FILE), child.id().to_string())?;
        eprintln!(
            "starting the local cluster (supervisor pid {}, log {})",
            child.id(),
            dir.join(LOG_FILE).display()
        );
        let state = wait_ready(&dir, &mut child)?;
        eprintln!(
            "up. Pod IPs are reachable only inside: `cargo xtask shell -- CMD`. \
             Stop with `cargo xtask down`. For this shell:"
        );
        print!("{}", state.env_lines());
        Ok(())
    }

    fn profile(&self) -> Profile {
        if self.release {
            Profile::Release
        } else {
            Profile::Debug
        }
    }

    fn spawn_supervisor(&self, dir: &Path) -> Result<Child> {
        let log = File::create(dir.join(LOG_FILE))?;
        // This very binary, also if a build replaced the file meanwhile.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args(["up", SUPERVISE_ARG]);
        if self.release {
            cmd.arg("--release");
        }
        // Its own process group: a Ctrl-C in the caller's terminal does not reach it.
        cmd.env("HAPOD_UP_DIR", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        cmd.spawn().context("starting the supervisor")
    }
}

/// Waits for the supervisor's state file; stops the supervisor if it does not come.
fn wait_ready(dir: &Path, child: &mut Child) -> Result<State> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the supervisor exited ({status}) before the cluster was up; its log:\n{}",
                tail(&dir.join(LOG_FILE), 40)
            );
        }
        if let Some(state) = super::read_state(dir)? {
            return Ok(state);
        }
        if Instant::now() >= deadline {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = killpg(pid, Signal::SIGTERM);
            super::wait_gone(pid, Duration::from_secs(60));
            bail!(
                "the local cluster was not up within {START_TIMEOUT:?}; its log:\n{}",
                tail(&dir.join(LOG_FILE), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The supervisor: forwards a loopback port of the caller's namespace to the API server of a
/// testbed in a namespace of its own, until SIGTERM, SIGINT or SIGHUP.
fn supervise(dir: &Path, profile: Profile) -> Result<()> {
    // Bound before leaving the caller's namespace, so that it stays reachable from there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    hapod_testkit::netns::enter_here()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut stop = [
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ];
        let tb = Testbed::start(Options {
            name: "up".into(),
            profile,
            build: false,
            run_dir: Some(dir.join("run")),
            ..Default::default()
        })
        .await?;
        let forwarded = forward(listener, tb.control_plane()?.server())?;
        let state = write_state(dir, &tb, &forwarded)?;
        eprintln!("ready; kubeconfig {}", state.kubeconfig.display());
        let [term, int, hup] = &mut stop;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
        eprintln!("stopping");
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
        drop(tb);
        Ok(())
    })
}

/// Forwards every connection to `listener` to the API server (`https://127.0.0.1:<port>`);
/// returns the forwarded URL. TLS passes through: the serving certificate names 127.0.0.1.
fn forward(listener: std::net::TcpListener, server: &str) -> Result<String> {
    let target = server
        .strip_prefix("https://")
        .with_context(|| format!("unexpected API server URL {server}"))?
        .to_owned();
    let url = format!("https://{}", listener.local_addr()?);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        while let Ok((mut outside, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut inside) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                }
            });
        }
    });
    Ok(url)
}

/// Writes the forwarded kubeconfig, then the state (its presence means ready).
fn write_state(dir: &Path, tb: &Testbed, forwarded: &str) -> Result<State> {
    let cp = tb.control_plane()?;
    let admin = std::fs::read_to_string(cp.kubeconfig())?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, admin.replace(cp.server(), forwarded))?;
    let state = State {
        kubeconfig,
        inside_kubeconfig: cp.kubeconfig(),
        kubectl_dir: cp.binaries().dir().to_path_buf(),
    };
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
    std::fs::rename(tmp, dir.join(STATE_FILE))?;
    Ok(state)
}
