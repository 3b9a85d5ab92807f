//! Starting container processes: a private mount namespace per container (its own /tmp and
//! the pod's volumes bind-mounted at their mount paths), its own process group, and death of
//! the node taking the process with it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc as std_mpsc;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// A bind mount into the container's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// Host folder bind-mounted on /tmp inside the new mount namespace.
    pub tmp_dir: Option<PathBuf>,
    pub mounts: Vec<BindMount>,
    /// stdout and stderr are appended here (there is no `kubectl logs`).
    pub log_file: Option<PathBuf>,
    /// Join the mount namespace of this process instead of creating one (exec probes run
    /// inside their container's view of the file system).
    pub join_mount_ns_of: Option<u32>,
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Every directory from the root down to `p` (for `mkdir -p` after fork, where allocating is
/// not allowed).
fn ancestors_top_down(p: &Path) -> io::Result<Vec<CString>> {
    let mut v: Vec<CString> = p
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty() && *a != Path::new("/"))
        .map(cstring)
        .collect::<io::Result<_>>()?;
    v.reverse();
    Ok(v)
}

/// First descriptor number used for mount sources in the child (below the usual soft limit
/// of 1024 open files).
const SOURCE_FD_BASE: i32 = 700;

/// A mount source, opened (O_PATH) by the child right after it entered its own mount namespace
/// and named through `/proc/self/fd`: once /tmp is replaced, host paths below /tmp (such as a
/// state dir there) would otherwise resolve inside the container's /tmp. (A descriptor opened by
/// the parent cannot be used: it belongs to the parent's mount namespace.)
struct HeldPath {
    path: CString,
    fd: i32,
    proc_path: CString,
}

impl HeldPath {
    fn new(p: &Path, slot: i32) -> io::Result<Self> {
        let fd = SOURCE_FD_BASE + slot;
        Ok(Self {
            path: cstring(p)?,
            fd,
            proc_path: CString::new(format!("/proc/self/fd/{fd}")).map_err(io::Error::other)?,
        })
    }

    /// Runs in the child: opens the path at the fixed descriptor number.
    #[allow(unsafe_code)]
    fn open(&self) -> io::Result<()> {
        // SAFETY: valid NUL-terminated path; plain system calls.
        let fd = unsafe { libc::open(self.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors belong to this (child) process.
        let rc = unsafe { libc::dup3(fd, self.fd, libc::O_CLOEXEC) };
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

struct PreparedMount {
    source: HeldPath,
    target: CString,
    parents: Vec<CString>,
    is_file: bool,
    read_only: bool,
}

/// Builds the command; everything the child does between fork and exec is prepared here so
/// that the child only makes system calls.
#[allow(unsafe_code)]
pub fn build_command(spec: &ProcessSpec) -> io::Result<Command> {
    // The binary is opened here, in the node's own mount namespace, and executed through
    // /proc/self/fd: a binary below /tmp (a checkout there) would otherwise be hidden by the
    // container's own /tmp. Exec needs no namespace match, unlike a bind-mount source. The
    // descriptor is close-on-exec; the kernel has resolved it before it closes it.
    let program = if spec.program.is_absolute() {
        Some(File::open(&spec.program)?)
    } else {
        None
    };
    let mut cmd = match &program {
        Some(file) => {
            use std::os::fd::AsRawFd;
            let mut cmd = Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
            cmd.arg0(&spec.program);
            cmd
        }
        None => Command::new(&spec.program),
    };
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    match &spec.log_file {
        Some(path) => {
            let log = File::options().create(true).append(true).open(path)?;
            cmd.stdout(log.try_clone()?).stderr(log);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let join_ns: Option<OwnedFd> = match spec.join_mount_ns_of {
        Some(pid) => Some(File::open(format!("/proc/{pid}/ns/mnt"))?.into()),
        None => None,
    };
    let tmp = spec
        .tmp_dir
        .as_deref()
        .map(|p| HeldPath::new(p, 0))
        .transpose()?;
    let mounts = spec
        .mounts
        .iter()
        .zip(1..)
        .map(|(m, slot)| {
            Ok(PreparedMount {
                source: HeldPath::new(&m.source, slot)?,
                target: cstring(&m.target)?,
                parents: m
                    .target
                    .parent()
                    .map(ancestors_top_down)
                    .transpose()?
                    .unwrap_or_default(),
                is_file: m.source.is_file(),
                read_only: m.read_only,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let workdir = spec.working_dir.as_deref().map(cstring).transpose()?;
    let private_ns = spec.join_mount_ns_of.is_none() && (tmp.is_some() || !mounts.is_empty());

    let child_setup = move || -> io::Result<()> {
        // Keeps the binary's descriptor open until the child executes it.
        let _program = &program;
        // If the node dies (even by SIGKILL) its containers must not outlive it.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        if let Some(fd) = &join_ns {
            setns(fd, CloneFlags::CLONE_NEWNS)?;
        } else if private_ns {
            unshare(CloneFlags::CLONE_NEWNS)?;
            // Private propagation, so that the binds below never show up on the host.
            mount(
                None::<&str>,
                c"/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            for held in tmp.iter().chain(mounts.iter().map(|m| &m.source)) {
                held.open()?;
            }
            if let Some(tmp) = &tmp {
                mount(
                    Some(tmp.proc_path.as_c_str()),
                    c"/tmp",
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
            }
            for m in &mounts {
                // Mount points that do not exist yet are created (under /tmp they land in the
                // container's own /tmp; elsewhere on the host, as empty directories or files).
                for dir in &m.parents {
                    // SAFETY: valid NUL-terminated path; EEXIST is expected and ignored.
                    unsafe { libc::mkdir(dir.as_ptr(), 0o755) };
                }
                if m.is_file {
                    // SAFETY: as above; the descriptor is closed right away.
                    let fd = unsafe {
                        libc::open(
                            m.target.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        )
                    };
                    if fd >= 0 {
                        // SAFETY: fd was just opened by this process.
                        unsafe { libc::close(fd) };
                    }
                } else {
                    // SAFETY: as above.
                    unsafe { libc::mkdir(m.target.as_ptr(), 0o755) };
                }
                mount(
                    Some(m.source.proc_path.as_c_str()),
                    m.target.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
                if m.read_only {
                    mount(
                        None::<&str>,
                        m.target.as_c_str(),
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        None::<&str>,
                    )?;
                }
            }
        }
        if let Some(dir) = &workdir {
            nix::unistd::chdir(dir.as_c_str())?;
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls on data prepared above.
    unsafe { cmd.pre_exec(child_setup) };
    Ok(cmd)
}

type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

/// Spawns children from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that
/// forked a child exits, so forking from short-lived runtime threads would kill containers at
/// random; this thread lives as long as the node.
#[derive(Debug, Clone)]
pub struct Spawner {
    tx: std_mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    /// Must be called inside a tokio runtime: children are registered with it for exit
    /// notifications.
    pub fn start() -> io::Result<Self> {
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = std_mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("hapod-node-spawner".into())
            .spawn(move || {
                let _guard = handle.enter();
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(Self { tx })
    }

    pub async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

/// Signals a container's whole process group (its process and everything it started).
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_listed_from_the_root() {
        let v = ancestors_top_down(Path::new("/var/run/secrets")).unwrap();
        let v: Vec<_> = v.iter().map(|c| c.to_str().unwrap().to_string()).collect();
        assert_eq!(v, ["/var", "/var/run", "/var/run/secrets"]);
    }

    #[tokio::test]
    #[allow(unsafe_code)]
    async fn private_tmp_and_bind_mounts() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mount namespaces need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(vol.join("token"), "abc").unwrap();
        let target = dir.path().join("mnt/secrets");
        let log = dir.path().join("log");
        // The binary itself lives below /tmp (as in a checkout under /tmp), which the
        // container's own /tmp hides: it must still start.
        let program = dir.path().join("sh");
        std::fs::copy("/bin/sh", &program).unwrap();
        let spec = ProcessSpec {
            program,
            args: vec![
                "-c".into(),
                format!(
                    "touch /tmp/inside && cat {}/token && echo \"$X\"",
                    target.display()
                ),
            ],
            env: vec![("X".into(), "y".into())],
            tmp_dir: Some(tmp.clone()),
            mounts: vec![BindMount {
                source: vol.clone(),
                target: target.clone(),
                read_only: true,
            }],
            log_file: Some(log.clone()),
            ..Default::default()
        };
        let spawner = Spawner::start().unwrap();
        let mut child = spawner.spawn(build_command(&spec).unwrap()).await.unwrap();
        assert!(child.wait().await.unwrap().success());
        assert!(
            tmp.join("inside").exists(),
            "the container's /tmp is the host folder"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "abcy\n");
        // The bind was private to the child's namespace.
        assert!(!target.join("token").exists());
    }
}
