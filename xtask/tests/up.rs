//! `cargo xtask up | shell | down` as a user runs them: the printed lines give a working
//! kubectl, `shell` reaches a pod IP, `down` leaves nothing behind. Needs the control plane
//! and the workspace binaries built (`cargo xtask test` builds both before this runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

/// `cargo xtask ARGS` with the state in `dir` (never the user's own local cluster).
fn xtask(dir: &Path, args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("HAPOD_UP_DIR", dir)
        .output()
        .with_context(|| format!("running xtask {}", args.join(" ")))
}

fn ok(out: Output, what: &str) -> Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Stops the cluster if the test failed before `down`.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = xtask(&self.0, &["down"]);
        }
    }
}

/// The value of `export NAME='...'` in the printed lines.
fn exported(lines: &str, name: &str) -> Result<String> {
    let line = lines
        .lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .with_context(|| format!("no export of {name} in {lines:?}"))?;
    let quoted = line.split(':').next().unwrap_or(line);
    Ok(quoted.trim_matches('\'').to_owned())
}

#[test]
fn up_gives_a_kubectl_shell_reaches_pods_down_cleans_up() -> Result<()> {
    let parent = tempfile::tempdir()?;
    let dir = parent.path().join("up");
    let _guard = Down(dir.clone());

    let lines = ok(xtask(&dir, &["up", "--no-build"])?, "xtask up")?;
    let kubeconfig = exported(&lines, "KUBECONFIG")?;
    let kubectl_dir = exported(&lines, "PATH")?;
    let pid: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))?
        .trim()
        .parse()?;

    // The printed environment, as `eval` would set it, from this process's namespace.
    let kubectl = |args: &[&str]| -> Result<Output> {
        let path = format!(
            "{kubectl_dir}:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("PATH", path)
            .output()
            .context("running kubectl")
    };
    let roles = ok(
        kubectl(&[
            "-n",
            "hapod-demo",
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.labels.role} {.status.podIP}{\"\\n\"}{end}",
        ])?,
        "kubectl get pods",
    )?;
    let mut active: Vec<&str> = roles
        .lines()
        .filter_map(|l| l.strip_prefix("active "))
        .collect();
    ensure!(
        roles.lines().count() == 2 && active.len() == 1,
        "expected 2 app pods, one active: {roles:?}"
    );
    let ip = active.pop().unwrap_or_default();

    // Running `up` again prints the same lines for the cluster already up.
    ensure!(ok(xtask(&dir, &["up", "--no-build"])?, "second up")? == lines);

    // The pod IP answers inside the testbed's namespace: the active app says it is active.
    let get_state = format!(
        "exec 3<>/dev/tcp/{ip}/8080 && printf 'GET /state HTTP/1.0\\r\\n\\r\\n' >&3 && \
         timeout 10 cat <&3"
    );
    let state = ok(
        xtask(&dir, &["shell", "--", "bash", "-c", &get_state])?,
        "xtask shell",
    )?;
    ensure!(
        state.starts_with("HTTP/1.0 200") && state.contains(r#""role":"active""#),
        "GET /state of the active pod from the shell: {state:?}"
    );

    ok(xtask(&dir, &["down"])?, "xtask down")?;
    ensure!(!dir.exists(), "down left {}", dir.display());
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the supervisor {pid} still runs"
    );
    ensure!(
        !kubectl(&["get", "ns", "--request-timeout=5s"])?
            .status
            .success(),
        "the API server still answers after down"
    );
    let shell = xtask(&dir, &["shell", "--", "true"])?;
    ensure!(
        !shell.status.success()
            && String::from_utf8_lossy(&shell.stderr).contains("no local cluster is running"),
        "shell after down: {shell:?}"
    );
    Ok(())
}
