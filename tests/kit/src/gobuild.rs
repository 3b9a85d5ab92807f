//! Go programs the testbed builds from the Go module proxy and caches outside the repository:
//! the control plane (`controlplane/`) and the real node's container runtime
//! (`noderuntime/`). A [`Recipe`] names the module folder, the files that determine the
//! result and the `go build` steps; its cache entry is
//! `${XDG_CACHE_HOME:-~/.cache}/hapod/<product>/<label>-<hash of inputs and steps>/`,
//! built once under a lock and renamed into place whole.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// One `go build` run inside the module folder.
#[derive(Debug, Clone)]
pub struct Step {
    /// Packages to build (`.` for the module's own main package).
    pub packages: Vec<String>,
    /// `-o` relative to the cache entry: a file name for one package, `.` for several (each
    /// binary then takes the last element of its package path).
    pub output: String,
    /// cgo on (a C toolchain and the C libraries' headers needed) or off (a static binary).
    pub cgo: bool,
    /// `-tags`.
    pub tags: Vec<String>,
    /// `-ldflags`.
    pub ldflags: String,
}

impl Step {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "build".into(),
            "-v".into(),
            "-trimpath".into(),
            // The state of the hapod checkout says nothing about the binary.
            "-buildvcs=false".into(),
            format!("-ldflags={}", self.ldflags),
        ];
        if !self.tags.is_empty() {
            args.push(format!("-tags={}", self.tags.join(",")));
        }
        args
    }

    /// What makes the binary besides the inputs: changing it must miss the cache.
    fn fingerprint(&self) -> String {
        format!(
            "CGO_ENABLED={} {} -o {} {}",
            u8::from(self.cgo),
            self.args().join(" "),
            self.output,
            self.packages.join(" ")
        )
    }
}

/// How to build one product.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The cache folder's name.
    pub product: &'static str,
    /// What the progress lines call it.
    pub title: &'static str,
    /// The Go module folder in the repository.
    pub source: PathBuf,
    /// Files of `source` whose content determines the result.
    pub inputs: &'static [&'static str],
    /// Leads the entry's name (a version, say).
    pub label: String,
    pub steps: Vec<Step>,
    /// Symlinks made in the entry: (name, target).
    pub links: Vec<(String, String)>,
    /// Files the complete entry has (binaries and links).
    pub files: Vec<String>,
    /// How long a first build takes, for the progress line.
    pub expected_duration: &'static str,
}

/// Root of a product's cache: `${XDG_CACHE_HOME:-$HOME/.cache}/hapod/<product>`.
fn cache_root(product: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?,
        )
        .join(".cache"),
    };
    Ok(base.join("hapod").join(product))
}

impl Recipe {
    /// The cache entry of the current sources.
    pub fn entry(&self) -> Result<PathBuf> {
        let mut hasher = Sha256::new();
        for step in &self.steps {
            hasher.update(step.fingerprint());
        }
        for name in self.inputs {
            let path = self.source.join(name);
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            hasher.update(name.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
        let hash: String = hasher.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(cache_root(self.product)?.join(format!("{}-{hash}", self.label)))
    }

    /// Whether the entry of the current sources is complete (a stat per file).
    pub fn is_cached(&self) -> bool {
        self.entry().is_ok_and(|dir| self.is_complete(&dir))
    }

    fn is_complete(&self, dir: &Path) -> bool {
        self.files.iter().all(|name| dir.join(name).is_file())
    }

    /// The entry of the current sources, built first if the cache has none.
    pub fn ensure_built(&self) -> Result<PathBuf> {
        let dir = self.entry()?;
        if self.is_complete(&dir) {
            return Ok(dir);
        }
        let root = cache_root(self.product)?;
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        // One build at a time per cache: a second caller (another test binary, another
        // engineer's xtask) waits and then finds the entry built.
        let lock_path = root.join(".build.lock");
        let lock_file = File::create(&lock_path)?;
        let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, _)) => {
                eprintln!(
                    "waiting for another build of the {} (lock {})",
                    self.title,
                    lock_path.display()
                );
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e)?
            }
        };
        if self.is_complete(&dir) {
            return Ok(dir);
        }
        // Holding the lock, any staging directory left is from a build that was killed.
        for entry in fs::read_dir(&root)? {
            let path = entry?.path();
            if path.is_dir()
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
            {
                fs::remove_dir_all(&path)?;
            }
        }
        self.build_into(&dir)?;
        Ok(dir)
    }

    fn build_into(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().context("cache entry has no parent")?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let staging = parent.join(format!(".tmp-{name}-{}", std::process::id()));
        fs::create_dir_all(&staging)?;
        let log_path = parent.join(format!("{name}.build.log"));
        eprintln!(
            "building the {} {} from {}; the first build takes {} on 2 cores, later runs \
             reuse {}\n  log: {}",
            self.title,
            self.label,
            self.source.display(),
            self.expected_duration,
            dir.display(),
            log_path.display()
        );
        let started = Instant::now();
        let log = Arc::new(Mutex::new(File::create(&log_path)?));
        for step in &self.steps {
            if let Err(error) = run_step(step, &self.source, &staging, &log, started) {
                let _ = fs::remove_dir_all(&staging);
                return Err(error.context(format!(
                    "building the {} (full log {})",
                    self.title,
                    log_path.display()
                )));
            }
        }
        for (link, target) in &self.links {
            std::os::unix::fs::symlink(target, staging.join(link))?;
        }
        // The entry appears complete or not at all, whatever else runs concurrently.
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::rename(&staging, dir)?;
        eprintln!(
            "built the {} in {} s: {}",
            self.title,
            started.elapsed().as_secs(),
            dir.display()
        );
        Ok(())
    }
}

fn run_step(
    step: &Step,
    source: &Path,
    staging: &Path,
    log: &Arc<Mutex<File>>,
    started: Instant,
) -> Result<()> {
    let mut child = Command::new("go")
        .args(step.args())
        .arg("-o")
        .arg(staging.join(&step.output))
        .args(&step.packages)
        .current_dir(source)
        .env("CGO_ENABLED", if step.cgo { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `go build` (is Go >= 1.26 installed and on PATH?)")?;

    // `go build -v` names every package as it compiles it; the count and the latest name
    // make the progress line, the whole output goes to the log.
    #[derive(Default)]
    struct Progress {
        packages: usize,
        last: String,
        tail: Vec<String>,
    }
    let progress = Arc::new(Mutex::new(Progress::default()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().context("no stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().context("no stderr")?),
    ]
    .into_iter()
    .map(|pipe| {
        let progress = progress.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                // A failing log write must not stop the build; the progress still counts.
                let _ = writeln!(log.lock().expect("log lock"), "{line}");
                let mut p = progress.lock().expect("progress lock");
                if !line.starts_with('#') && !line.contains(' ') {
                    p.packages += 1;
                    p.last = line.clone();
                }
                p.tail.push(line);
                if p.tail.len() > 40 {
                    p.tail.remove(0);
                }
            }
        })
    })
    .collect();

    let mut next_report = started.elapsed() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= next_report {
            let p = progress.lock().expect("progress lock");
            let doing = match p.packages {
                // Every package came from Go's build cache: only the link is left.
                0 => "linking".to_owned(),
                n => format!("{n} packages compiled, last {}", p.last),
            };
            eprintln!(
                "  still building: {} s ({doing})",
                started.elapsed().as_secs()
            );
            next_report += Duration::from_secs(15);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for reader in readers {
        // The reader threads end at EOF, right after the process exits.
        let _ = reader.join();
    }
    if !status.success() {
        let tail = progress.lock().expect("progress lock").tail.join("\n");
        bail!(
            "go build {} failed ({status}); last lines:\n{tail}",
            step.packages.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(cgo: bool) -> Step {
        Step {
            packages: vec![".".into()],
            output: "x".into(),
            cgo,
            tags: vec![],
            ldflags: "-s -w".into(),
        }
    }

    #[test]
    fn the_entry_changes_with_the_inputs_and_the_build_flags() {
        let source = tempfile::tempdir().unwrap();
        fs::write(source.path().join("go.mod"), "module a\n").unwrap();
        let recipe = Recipe {
            product: "gobuild-test",
            title: "test",
            source: source.path().into(),
            inputs: &["go.mod"],
            label: "v1".into(),
            steps: vec![step(false)],
            links: vec![],
            files: vec!["x".into()],
            expected_duration: "no time",
        };
        let first = recipe.entry().unwrap();
        assert!(
            first
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("v1-")
        );
        let with_cgo = Recipe {
            steps: vec![step(true)],
            ..recipe.clone()
        };
        assert_ne!(with_cgo.entry().unwrap(), first);
        fs::write(source.path().join("go.mod"), "module b\n").unwrap();
        assert_ne!(recipe.entry().unwrap(), first);
        assert!(!recipe.is_cached());
    }
}
